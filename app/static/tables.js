// Sortable tables: the entities, and the relations in words (the text alternative of the arcs).
// Each column header is a button, so sorting works from the keyboard; aria-sort tells screen readers.

function compare(a, b) {
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), "ru", { numeric: true });
}

export class SortableTable {
  // columns: [{key, label, value(row) -> sort value, cell(row) -> string, numeric?, hidden?}]
  constructor(table, columns, caption) {
    this.table = table;
    this.columns = columns;
    this.rows = [];
    this.order = null; // {key, dir}
    const cap = document.createElement("caption");
    cap.textContent = caption;
    const head = document.createElement("thead");
    const tr = document.createElement("tr");
    this.headers = columns.map((column) => {
      const th = document.createElement("th");
      th.scope = "col";
      th.setAttribute("aria-sort", "none");
      if (column.numeric) th.className = "num";
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = column.label;
      button.dataset.key = column.key;
      button.addEventListener("click", () => this.sortBy(column.key));
      th.append(button);
      tr.append(th);
      return th;
    });
    head.append(tr);
    this.body = document.createElement("tbody");
    table.replaceChildren(cap, head, this.body);
  }

  // A column that only some answers have (the scores): left out of the header and the rows, not emptied.
  showColumn(key, on) {
    const i = this.columns.findIndex((c) => c.key === key);
    this.columns[i].hidden = !on;
    this.headers[i].hidden = !on;
    if (!on && this.order && this.order.key === key) this.order = null;
  }

  set(rows) {
    this.rows = rows;
    this.render();
  }

  sortBy(key) {
    const dir = this.order && this.order.key === key && this.order.dir === 1 ? -1 : 1;
    this.order = { key, dir };
    this.render();
  }

  render() {
    let rows = this.rows;
    if (this.order) {
      const column = this.columns.find((c) => c.key === this.order.key);
      rows = [...rows].sort((x, y) => this.order.dir * compare(column.value(x), column.value(y)));
    }
    this.columns.forEach((column, i) => {
      const sorted = this.order && this.order.key === column.key;
      this.headers[i].setAttribute(
        "aria-sort",
        sorted ? (this.order.dir === 1 ? "ascending" : "descending") : "none",
      );
    });
    const fragment = document.createDocumentFragment();
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const column of this.columns) {
        if (column.hidden) continue;
        const td = document.createElement("td");
        if (column.numeric) td.className = "num";
        const content = column.cell(row);
        if (content instanceof Node) td.append(content);
        else td.textContent = content;
        tr.append(td);
      }
      fragment.append(tr);
    }
    this.body.replaceChildren(fragment);
  }
}

// "T12" sorts after "T2": the number of an id, when it has one.
export function idOrder(id) {
  const m = /^[A-Za-z]+(\d+)$/.exec(id);
  return m ? Number(m[1]) : id;
}
