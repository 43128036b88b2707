// The text with its entities highlighted and its relations drawn as labelled arcs, after brat and displaCy.
//
// The page breaks the text into rows itself instead of leaving it to the browser, because each row needs
// room above it for exactly as many arc levels as its arcs use, and an inline flow cannot make one line
// taller than the next. So: the text is cut into atoms (words, spaces and line breaks, also cut at every
// entity boundary), their widths are measured once, rows are filled greedily breaking only after spaces
// and at line breaks, arcs get levels per row, and then the rows are built with that much padding. Arcs are
// drawn from the measured positions of the rendered atoms, so they stay attached to their entities, and
// the whole layout is redone when the width changes. A relation between rows is drawn as two pieces, one
// leaving its row at the right edge and one entering the other row at the left edge (as brat does).

import { describeRelation, formatScore, quote } from "./annotations.js";
import { entityColours, relationColour } from "./colours.js";

const SVG = "http://www.w3.org/2000/svg";
const LEVEL = 18; // px between arc levels
const TOP = 4; // px above the highest arc of a row, and above a row without arcs
const RADIUS = 5; // px, the arcs' rounded corners
const LABEL_PAD = 3; // px of white around an arc label's text
const GAP = 4; // px kept free between two arcs on one level
const GUTTER = 14; // px either side of the text, where arcs between rows leave and enter (.rows' padding)

function isSpace(ch) {
  return ch === " " || ch === "\t" || ch === "\f" || ch === "\v" || ch === "\u3000" ||
    ch === "\u205f" || ch === "\u1680" || (ch >= "\u2000" && ch <= "\u200a");
}

function isBreak(ch) {
  return ch === "\n" || ch === "\r" || ch === "\u2028" || ch === "\u2029";
}

function element(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function svgElement(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// Atoms: [s, e) in code units, of one kind ("word", "space", "nl"), never across an entity boundary.
function cutIntoAtoms(text, cuts) {
  const atoms = [];
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    let j = i + 1;
    let kind;
    if (isBreak(ch)) {
      kind = "nl";
      if (ch === "\r" && text[j] === "\n" && !cuts.has(j)) j++;
    } else {
      kind = isSpace(ch) ? "space" : "word";
      while (j < text.length && !cuts.has(j) && !isBreak(text[j]) && isSpace(text[j]) === (kind === "space")) {
        j++;
      }
    }
    atoms.push({ s: i, e: j, kind, ents: [] });
    i = j;
  }
  return atoms;
}

export class TextView {
  constructor(root) {
    this.root = root;
    this.rows = element("div", "rows");
    this.svg = svgElement("svg", { class: "arcs", role: "group" });
    this.svg.setAttribute("aria-label", "Relations as arcs; the Tables view lists each one with its arguments");
    root.append(this.rows, this.svg);
    this.doc = null;
    this.width = -1;
    this.pending = false;
    this.canvas = document.createElement("canvas").getContext("2d");
    new ResizeObserver(() => {
      if (this.doc && this.root.clientWidth !== this.width) this.schedule();
    }).observe(root);
    root.addEventListener("pointerover", (event) => this.hover(event.target));
    root.addEventListener("pointerleave", () => this.unfocus());
  }

  // doc: from makeDocument; shows: {entity(e), relation(r)}, which of them to draw (a relation is drawn
  // only with both its arguments).
  show(doc, shows) {
    this.doc = doc;
    this.shows = shows;
    this.width = -1;
    this.cpOf = null;
    this.layout();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.layout();
    });
  }

  layout() {
    const doc = this.doc;
    if (!doc) return;
    const width = this.root.clientWidth;
    if (width === 0) return; // hidden (another tab): laid out when shown, through the resize observer
    this.width = width;
    this.unfocus();
    const entities = doc.entities.filter(this.shows.entity);
    const shown = new Set(entities.map((e) => e.index));
    const relations = doc.relations.filter(
      (r) =>
        this.shows.relation(r) &&
        shown.has(doc.byId.get(r.arg1).index) &&
        shown.has(doc.byId.get(r.arg2).index),
    );
    const atoms = this.atoms(entities);
    const nodes = this.measure(atoms);
    const rows = this.fill(atoms, width - 2 * GUTTER - 2);
    const anchors = this.anchors(atoms);
    this.plan(rows, anchors, relations);
    this.build(rows, atoms, nodes);
    this.draw(rows, nodes, anchors);
  }

  // ---- atoms and their elements ----

  atoms(entities) {
    const text = this.doc.text;
    const cuts = new Set();
    const fragments = [];
    for (const e of entities) {
      e.units.forEach(([a, b], k) => {
        cuts.add(a);
        cuts.add(b);
        fragments.push({ a, b, e, last: k === e.units.length - 1 });
      });
    }
    const atoms = cutIntoAtoms(text, cuts);
    // Which fragments cover each atom (atoms never straddle a boundary, so inside means a <= s).
    fragments.sort((x, y) => x.a - y.a || y.b - x.b);
    let next = 0;
    let active = [];
    for (const atom of atoms) {
      while (next < fragments.length && fragments[next].a <= atom.s) active.push(fragments[next++]);
      active = active.filter((f) => f.b > atom.s);
      atom.ents = active.filter((f) => f.b >= atom.e);
    }
    // Each entity's label follows its last atom.
    const out = [];
    for (let i = 0; i < atoms.length; i++) {
      const atom = atoms[i];
      out.push(atom);
      for (const f of atom.ents) {
        if (f.last && f.b === atom.e) out.push({ kind: "label", ents: [f], s: atom.e, e: atom.e });
      }
    }
    return out;
  }

  measure(atoms) {
    const doc = this.doc;
    const probe = element("div", "row measuring");
    const samples = new Map(); // what an atom looks like -> the first atom that looks so
    const nodes = [];
    this.atomsOf = new Map(); // entity index -> its atoms' elements (for hovering)
    for (const atom of atoms) {
      let node;
      if (atom.kind === "nl") {
        nodes.push(null);
        continue;
      }
      if (atom.kind === "label") {
        const e = atom.ents[0].e;
        node = element("span", "lab");
        node.textContent = e.type;
        node.dataset.ent = e.id;
        node.title = this.describe([e]);
        this.paint(node, e);
      } else {
        node = element("span", atom.ents.length ? "ent" : atom.kind === "space" ? "sp" : "w");
        node.textContent = doc.text.slice(atom.s, atom.e);
        if (atom.ents.length) {
          // The innermost entity paints the atom; an outer one (nested annotations) shows as an outline.
          const inner = atom.ents.reduce((x, y) => (y.b - y.a < x.b - x.a ? y : x));
          this.paint(node, inner.e);
          if (atom.ents.length > 1) node.classList.add("overlap");
          if (atom.ents.some((f) => f.a === atom.s)) node.classList.add("ent-start");
          if (atom.ents.some((f) => f.b === atom.e)) node.classList.add("ent-end");
          node.dataset.ents = atom.ents.map((f) => f.e.id).join(" ");
          node.title = this.describe(atom.ents.map((f) => f.e));
          node.dataset.start = String(this.codePoint(atom.s));
          node.dataset.end = String(this.codePoint(atom.e));
        }
        if (atom.kind === "space" && node.textContent.includes("\t")) {
          // A tab's width depends on where it falls; a fixed one keeps the measured width true.
          node.classList.add("tab");
          node.style.width = `${node.textContent.length * 2}ch`;
        }
      }
      for (const f of atom.ents) {
        if (!this.atomsOf.has(f.e.index)) this.atomsOf.set(f.e.index, []);
        this.atomsOf.get(f.e.index).push(node);
      }
      // Words repeat: each distinct one is measured once (laying out one long line of every atom is most
      // of the time a large document takes).
      atom.key = `${node.className}\u0000${node.style.width}\u0000${node.textContent}`;
      if (!samples.has(atom.key)) {
        samples.set(atom.key, node);
        probe.append(node);
      }
      nodes.push(node);
    }
    this.rows.replaceChildren(probe);
    const widths = new Map([...samples].map(([k, node]) => [k, node.getBoundingClientRect().width]));
    for (const atom of atoms) atom.w = atom.key === undefined ? 0 : widths.get(atom.key);
    return nodes;
  }

  // The hover text of an atom or label: each entity it belongs to, with its score where the answer has one.
  describe(entities) {
    return entities.map((e) => `${e.id} ${e.type} ${quote(e)}${scored(this.doc, e)}`).join("\n");
  }

  paint(node, entity) {
    const c = entityColours(entity.type);
    node.style.setProperty("--fill", c.fill);
    node.style.setProperty("--edge", c.edge);
    node.dataset.type = entity.type;
  }

  codePoint(unit) {
    // data-start/data-end carry the API's offsets (code points), as the tables and downloads do.
    if (!this.cpOf) {
      const text = this.doc.text;
      this.cpOf = new Map();
      if (/[\uD800-\uDFFF]/.test(text)) {
        let cp = 0;
        for (let u = 0; u < text.length; cp++) {
          this.cpOf.set(u, cp);
          u += text.codePointAt(u) > 0xffff ? 2 : 1;
        }
        this.cpOf.set(text.length, cp);
      }
    }
    return this.cpOf.size ? this.cpOf.get(unit) : unit;
  }

  // ---- rows ----

  // Greedy: a row ends at a line break, or before a word that would cross `width`; breaks come only
  // after spaces, so an entity cut inside a word (дорожно-|транспортных) is never split, and a label stays
  // with its entity. A row's trailing spaces may pass the edge (the browser lets them hang).
  fill(atoms, width) {
    const rows = [];
    let row = { atoms: [], x: 0 };
    const close = () => {
      rows.push(row);
      row = { atoms: [], x: 0 };
    };
    let i = 0;
    while (i < atoms.length) {
      if (atoms[i].kind === "nl") {
        close();
        i++;
        continue;
      }
      // The next group: atoms up to and including the spaces after a word.
      let j = i;
      let solid = 0;
      while (j < atoms.length && atoms[j].kind !== "space" && atoms[j].kind !== "nl") solid += atoms[j++].w;
      let trailing = 0;
      while (j < atoms.length && atoms[j].kind === "space") trailing += atoms[j++].w;
      if (row.atoms.length && row.x + solid > width && solid > 0) close();
      for (let k = i; k < j; k++) {
        atoms[k].long = atoms[k].w > width; // wraps inside itself (.long), the only wrapping in a row
        atoms[k].row = rows.length;
        atoms[k].x = row.x;
        row.x += atoms[k].w;
        row.atoms.push(k);
      }
      i = j;
    }
    if (row.atoms.length || !rows.length) close();
    return rows;
  }

  // Where arcs attach: the part of each entity on the row of its first atom.
  anchors(atoms) {
    const anchors = new Map();
    atoms.forEach((atom, k) => {
      if (atom.kind === "label" || atom.kind === "nl") return;
      for (const f of atom.ents) {
        const a = anchors.get(f.e.index);
        if (!a) {
          const x0 = GUTTER + atom.x;
          anchors.set(f.e.index, { row: atom.row, first: k, last: k, x0, x1: x0 + atom.w, ends: [] });
        } else if (a.row === atom.row) {
          a.last = k;
          a.x1 = GUTTER + atom.x + atom.w;
        }
      }
    });
    return anchors;
  }

  // Arc pieces per row, each with a level; each entity's arc ends spread along it, the arcs to the left
  // of it on its left part and the shortest arcs outermost, so that legs do not cross arcs.
  plan(rows, anchors, relations) {
    const doc = this.doc;
    const far = 1e7; // the distance given to an arc that leaves the row
    this.drawn = [];
    for (const rel of relations) {
      const a = anchors.get(doc.byId.get(rel.arg1).index);
      const b = anchors.get(doc.byId.get(rel.arg2).index);
      if (!a || !b) continue; // an entity with no visible character (only a line break)
      const ca = (a.x0 + a.x1) / 2;
      const cb = (b.x0 + b.x1) / 2;
      const forward = a.row < b.row || (a.row === b.row && (ca < cb || (ca === cb && a.first <= b.first)));
      const dist = a.row === b.row ? Math.abs(cb - ca) : far;
      const item = { rel, a, b, forward };
      item.endA = { side: forward ? 1 : -1, dist };
      item.endB = { side: forward ? -1 : 1, dist };
      a.ends.push(item.endA);
      b.ends.push(item.endB);
      this.drawn.push(item);
    }
    for (const anchor of anchors.values()) {
      const ends = anchor.ends;
      const left = ends.filter((x) => x.side < 0).sort((x, y) => x.dist - y.dist);
      const right = ends.filter((x) => x.side > 0).sort((x, y) => y.dist - x.dist);
      [...left, ...right].forEach((end, k, all) => {
        end.anchor = anchor;
        end.at = (k + 1) / (all.length + 1);
      });
    }
    const perRow = rows.map(() => []);
    const at = (end) => end.anchor.x0 + end.at * (end.anchor.x1 - end.anchor.x0);
    for (const item of this.drawn) {
      const label = this.labelWidth(item.rel.type);
      const { a, b } = item;
      item.pieces = [];
      if (a.row === b.row) {
        item.pieces.push({ row: a.row, from: at(item.endA), to: at(item.endB), legs: [item.endA, item.endB] });
      } else {
        // The earlier argument's piece leaves to the right; the later one's enters from the left.
        const [early, late] = a.row < b.row ? [item.endA, item.endB] : [item.endB, item.endA];
        item.pieces.push({ row: early.anchor.row, from: at(early), to: Infinity, legs: [early, null] });
        item.pieces.push({ row: late.anchor.row, from: -Infinity, to: at(late), legs: [null, late] });
      }
      for (const p of item.pieces) {
        const lo = Math.max(Math.min(p.from, p.to), 0);
        const hi = Math.min(Math.max(p.from, p.to), this.width);
        const mid = (lo + hi) / 2;
        p.span = [Math.min(lo, mid - label / 2) - GAP, Math.max(hi, mid + label / 2) + GAP];
        p.item = item;
        perRow[p.row].push(p);
      }
    }
    rows.forEach((row, r) => {
      const levels = [];
      perRow[r].sort((x, y) => x.span[1] - x.span[0] - (y.span[1] - y.span[0]));
      for (const p of perRow[r]) {
        let level = 0;
        while (levels[level] && levels[level].some((q) => q[0] < p.span[1] && p.span[0] < q[1])) level++;
        (levels[level] ||= []).push(p.span);
        p.level = level + 1;
      }
      row.levels = levels.length;
    });
  }

  labelWidth(type) {
    if (!this.labelFont) {
      this.labelFont = `600 11px ${getComputedStyle(this.root).fontFamily}`;
      this.canvas.font = this.labelFont;
    }
    return this.canvas.measureText(type).width + 2 * LABEL_PAD;
  }

  build(rows, atoms, nodes) {
    const fragment = document.createDocumentFragment();
    this.rowEls = rows.map((row) => {
      const div = element("div", "row");
      div.style.paddingTop = `${TOP + row.levels * LEVEL}px`;
      for (const k of row.atoms) {
        if (atoms[k].long) nodes[k].classList.add("long");
        div.append(nodes[k]);
      }
      fragment.append(div);
      return div;
    });
    this.rows.replaceChildren(fragment);
  }

  // ---- arcs ----

  draw(rows, nodes, anchors) {
    const doc = this.doc;
    const box = this.root.getBoundingClientRect();
    const width = this.rows.clientWidth;
    this.svg.setAttribute("width", String(width));
    this.svg.setAttribute("height", String(this.rows.scrollHeight));
    this.svg.replaceChildren(this.markers(new Set(this.drawn.map((item) => item.rel.type))));
    const rowTop = this.rowEls.map((div) => div.getBoundingClientRect().top - box.top);
    // The anchors' real extent and top, from the rendered atoms.
    for (const a of anchors.values()) {
      const first = nodes[a.first].getClientRects()[0];
      const last = [...nodes[a.last].getClientRects()].at(-1);
      a.left = first.left - box.left;
      a.right = last.right - box.left;
      a.top = first.top - box.top;
    }
    this.arcsOf = new Map(); // relation index -> its <g>
    this.relationsOf = new Map(); // entity index -> relation indexes
    for (const item of this.drawn) {
      const g = svgElement("g", { class: "arc" });
      g.dataset.rel = item.rel.id;
      g.dataset.type = item.rel.type;
      g.dataset.arg1 = item.rel.arg1;
      g.dataset.arg2 = item.rel.arg2;
      const colour = relationColour(item.rel.type);
      g.style.setProperty("--arc", colour);
      const title = svgElement("title");
      title.textContent = `${item.rel.id} ${describeRelation(doc, item.rel)}${scored(doc, item.rel)}`;
      g.append(title);
      for (const p of item.pieces) this.drawPiece(g, p, item, rowTop[p.row], rows[p.row].levels, width);
      this.svg.append(g);
      this.arcsOf.set(item.rel.index, g);
      for (const id of [item.rel.arg1, item.rel.arg2]) {
        const i = doc.byId.get(id).index;
        if (!this.relationsOf.has(i)) this.relationsOf.set(i, []);
        this.relationsOf.get(i).push(item.rel.index);
      }
    }
  }

  drawPiece(g, p, item, top, levels, width) {
    const y = top + TOP + (levels - p.level) * LEVEL + LEVEL / 2;
    const x = (end) => end.anchor.left + end.at * (end.anchor.right - end.anchor.left);
    const [startLeg, endLeg] = p.legs;
    const xs = startLeg ? x(startLeg) : p.from < 0 ? 0 : width;
    const xe = endLeg ? x(endLeg) : p.to < 0 ? 0 : width;
    const dir = xe >= xs ? 1 : -1;
    const r = Math.min(RADIUS, Math.abs(xe - xs) / 2);
    // Drawn from the left piece's start to its end, then reversed where arg2 is on the left, so that the
    // arrowhead (marker-end) always lands on arg2.
    let d = startLeg
      ? `M${xs},${startLeg.anchor.top - 1} V${y + r} Q${xs},${y} ${xs + dir * r},${y}`
      : `M${xs},${y}`;
    d += endLeg ? ` H${xe - dir * r} Q${xe},${y} ${xe},${y + r} V${endLeg.anchor.top - 1}` : ` H${xe}`;
    const toArg2 = endLeg ? endLeg === item.endB : startLeg !== item.endB;
    if (!toArg2) d = reversePath(xs, xe, y, r, dir, startLeg, endLeg);
    // A wide transparent copy under the visible line makes the arc easy to point at.
    g.append(svgElement("path", { d, class: "hit" }));
    const path = svgElement("path", { d, class: "line" });
    if ((toArg2 && endLeg) || (!toArg2 && startLeg)) {
      path.setAttribute("marker-end", `url(#${this.markerOf.get(item.rel.type)})`);
    }
    g.append(path);
    const label = item.rel.type;
    const w = this.labelWidth(label);
    const mid = (Math.max(Math.min(xs, xe), 0) + Math.min(Math.max(xs, xe), width)) / 2;
    const cx = Math.min(Math.max(mid, w / 2), width - w / 2);
    g.append(
      svgElement("rect", { x: String(cx - w / 2), y: String(y - 7), width: String(w), height: "14", rx: "3" }),
    );
    const text = svgElement("text", { x: String(cx), y: String(y + 4) });
    text.textContent = label;
    g.append(text);
  }

  // One arrowhead per relation colour: a marker takes its paint from where it is defined, not from the
  // line that uses it.
  markers(types) {
    const defs = svgElement("defs");
    this.markerOf = new Map();
    [...types].forEach((type, k) => {
      const id = `arrow-${k}`;
      const marker = svgElement("marker", {
        id,
        viewBox: "0 0 8 8",
        refX: "7",
        refY: "4",
        markerWidth: "7",
        markerHeight: "7",
        orient: "auto",
      });
      marker.append(svgElement("path", { d: "M0,0 L8,4 L0,8 z", fill: relationColour(type) }));
      defs.append(marker);
      this.markerOf.set(type, id);
    });
    return defs;
  }

  // ---- hovering: an entity or an arc and its partners stand out, the rest fades ----

  hover(target) {
    if (!this.doc || !(target instanceof Element)) return;
    const arc = target.closest("g.arc");
    const atom = target.closest("[data-ents], [data-ent]");
    if (arc) {
      const rel = this.doc.relations.find((r) => r.id === arc.dataset.rel);
      this.focus([rel.arg1, rel.arg2], [rel.index]);
    } else if (atom) {
      const ids = (atom.dataset.ents || atom.dataset.ent).split(" ");
      const rels = ids.flatMap((id) => this.relationsOf.get(this.doc.byId.get(id).index) || []);
      const partners = rels.flatMap((i) => [this.doc.relations[i].arg1, this.doc.relations[i].arg2]);
      this.focus([...ids, ...partners], rels);
    } else {
      this.unfocus();
    }
  }

  focus(entityIds, relIndexes) {
    this.unfocus();
    this.focused = [];
    for (const id of new Set(entityIds)) {
      for (const node of this.atomsOf.get(this.doc.byId.get(id).index) || []) this.focused.push(node);
    }
    for (const i of relIndexes) if (this.arcsOf.has(i)) this.focused.push(this.arcsOf.get(i));
    for (const node of this.focused) node.classList.add("hl");
    this.root.classList.add("focusing");
  }

  unfocus() {
    for (const node of this.focused || []) node.classList.remove("hl");
    this.focused = [];
    this.root.classList.remove("focusing");
  }
}

function scored(doc, item) {
  return doc.scored ? `, score ${formatScore(item.score)}` : "";
}

function reversePath(xs, xe, y, r, dir, startLeg, endLeg) {
  // The same shape as the forward path, drawn from its end back to its start.
  let d = endLeg ? `M${xe},${endLeg.anchor.top - 1} V${y + r} Q${xe},${y} ${xe - dir * r},${y}` : `M${xe},${y}`;
  d += startLeg ? ` H${xs + dir * r} Q${xs},${y} ${xs},${y + r} V${startLeg.anchor.top - 1}` : ` H${xs}`;
  return d;
}
