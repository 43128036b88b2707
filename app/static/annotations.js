// The annotations as the page holds them, and the .ann writer.
//
// The API counts offsets in Unicode code points (Python strings); JavaScript strings index UTF-16 code
// units, so a character outside the Basic Multilingual Plane (an emoji) counts twice here. Each entity keeps
// the API's offsets (shown, downloaded) and gets code-unit offsets for slicing and drawing.

function codePointToUnit(text) {
  if (!/[\uD800-\uDFFF]/.test(text)) return null; // the common case: the two counts agree
  const map = [];
  let unit = 0;
  for (const ch of text) {
    map.push(unit);
    unit += ch.length;
  }
  map.push(unit);
  return map;
}

export function makeDocument(text, entities, relations) {
  const map = codePointToUnit(text);
  const unit = map ? (cp) => map[Math.min(cp, map.length - 1)] : (cp) => cp;
  const ents = entities.map((e, index) => {
    const fragments = e.fragments && e.fragments.length ? e.fragments : [[e.start, e.end]];
    return {
      index,
      id: e.id,
      type: e.type,
      start: e.start,
      end: e.end,
      text: e.text,
      score: scoreOf(e),
      fragments,
      units: fragments.map(([a, b]) => [unit(a), unit(b)]),
    };
  });
  const byId = new Map(ents.map((e) => [e.id, e]));
  // A relation whose argument is not among the entities cannot be drawn; the service's reader refuses such
  // files, so this only guards against a hand-edited answer.
  const rels = relations
    .filter((r) => byId.has(r.arg1) && byId.has(r.arg2))
    .map((r, index) => ({ index, id: r.id, type: r.type, arg1: r.arg1, arg2: r.arg2, score: scoreOf(r) }));
  // A model's answer scores what it found; annotations read from a file have no scores.
  const scored = ents.some((e) => e.score !== null) || rels.some((r) => r.score !== null);
  return { text, entities: ents, relations: rels, byId, unitOffset: unit, scored };
}

// The model's confidence in [0, 1], or null where the answer has none (absent or null).
function scoreOf(item) {
  return typeof item.score === "number" && Number.isFinite(item.score) ? item.score : null;
}

// What the score bar lets through: an item without a score is never hidden by it.
export function passes(item, threshold) {
  return item.score === null || item.score >= threshold;
}

// Two decimals, rounded down, as the bar's steps are: a score shown as 0.49 is hidden at 0.50 and shown at 0.49.
export function formatScore(score) {
  return score === null ? "–" : (Math.floor(score * 100 + 1e-9) / 100).toFixed(2);
}

// brat's line format cannot hold a line break inside an entity's text: the service's writer
// (app/text/brat.py, format_ann) turns each into a space, and so does this one.
function visible(text) {
  return text.replace(/[\r\n]/g, " ");
}

export function formatAnn(doc) {
  const lines = doc.entities.map((e) => {
    const offsets = e.fragments.map(([a, b]) => `${a} ${b}`).join(";");
    return `${e.id}\t${e.type} ${offsets}\t${visible(e.text)}`;
  });
  for (const r of doc.relations) lines.push(`${r.id}\t${r.type} Arg1:${r.arg1} Arg2:${r.arg2}`);
  return lines.map((line) => line + "\n").join("");
}

export function quote(entity) {
  const t = entity.text.length > 60 ? entity.text.slice(0, 57) + "…" : entity.text;
  return `«${visible(t)}»`;
}

// "TSK: «повышение» (CMP, T3) → «качества жизни населения» (MET, T4)": the relation in words, for the
// table and for each arc's title.
export function describeRelation(doc, rel) {
  const a = doc.byId.get(rel.arg1);
  const b = doc.byId.get(rel.arg2);
  return `${rel.type}: ${quote(a)} (${a.type}, ${a.id}) → ${quote(b)} (${b.type}, ${b.id})`;
}
