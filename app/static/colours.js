// Colours per annotation type. Entity highlights are pale (the text on them stays near-black, contrast
// above 12:1) with a darker edge and label (white on the edge colour, above 5:1; the edge against the page
// above 5:1, so a highlight is visible without relying on its fill). Relation colours stay above 5:1 against
// white, since their labels are text on white. Tests check these ratios in the browser.

const ENTITY = {
  MET: ["#d6e6ff", "#2f62b3"],
  ECO: ["#d3f2dc", "#2e7d46"],
  BIN: ["#ffe2bf", "#a35700"],
  CMP: ["#fcd5e3", "#ad2f68"],
  QUA: ["#e7dcfc", "#6a45b8"],
  ACT: ["#fff0a6", "#806600"],
  INST: ["#cdeff2", "#1d737c"],
  SOC: ["#eee2d0", "#83602f"],
};

// RuREBus relation types: reds for negative, greys and browns for neutral, greens for positive effects; two
// more colours for goals and tasks.
const RELATION = {
  NNG: "#b3261e",
  NNT: "#5f6368",
  NPS: "#1e7b34",
  PNG: "#ad1457",
  PNT: "#6d4c41",
  PPS: "#00695c",
  FNG: "#bf360c",
  FNT: "#455a64",
  FPS: "#33691e",
  GOL: "#1a56b0",
  TSK: "#6a1b9a",
};

// Types outside the lists (an .ann from another project): a hue from the name; these lightnesses keep the
// same contrasts on every hue.
function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

export function entityColours(type) {
  const known = ENTITY[type];
  if (known) return { fill: known[0], edge: known[1] };
  const h = hue(type);
  return { fill: `hsl(${h} 85% 90%)`, edge: `hsl(${h} 60% 28%)` };
}

export function relationColour(type) {
  return RELATION[type] || `hsl(${hue(type)} 65% 28%)`;
}

// The known types first in the corpus' order, then any others alphabetically.
export function orderTypes(types, known) {
  const order = Object.keys(known === "relation" ? RELATION : ENTITY);
  return [...types].sort((a, b) => {
    const ia = order.indexOf(a);
    const ib = order.indexOf(b);
    if (ia >= 0 || ib >= 0) return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib);
    return a.localeCompare(b);
  });
}
