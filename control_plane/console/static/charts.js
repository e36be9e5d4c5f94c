// Charts as inline SVG: a time series, a split bar, a heat map and a layered graph.
// Each chart is an <svg role="img"> with a <title> (its accessible name) and a <desc>;
// colours come from attributes (the page's CSP allows no inline styles).

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#0a58a8", "#a3161b", "#17622d", "#6b3fa0", "#8a4b00", "#00616e"];

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) if (value !== undefined && value !== null) node.setAttribute(key, value);
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

let ids = 0;
function frame(width, height, title, desc, cls = "chart") {
  const id = `chart-${++ids}`;
  return svg("svg", { class: cls, viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-labelledby": `${id}-t ${id}-d` },
    svg("title", { id: `${id}-t` }, title), svg("desc", { id: `${id}-d` }, desc));
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((m) => m >= value);
}

// series: [{name, points: [[x, value|null], ...]}]; a gap where a value is null. The x axis
// spans `domain` ([x0, x1]) and is labelled at its ends with `ends` ([left, right]).
function plot({ title, series, unit, width, height, format, domain, ends, legend = false }) {
  const left = 48, right = 8, top = 8, bottom = legend ? 40 : 22;
  if (legend) height += 18;
  const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
  const latest = series.map((s) => { const p = s.points.filter((q) => q[1] !== null).at(-1); return `${s.name} ${p ? format(p[1]) + unit : "no data"}`; });
  const chart = frame(width, height, title, all.length ? `Latest: ${latest.join(", ")}.` : "No data yet.");
  const [x0, x1] = domain;
  const ymax = niceMax(Math.max(...all.map((p) => p[1]), 0));
  const x = (t) => left + ((t - x0) / (x1 - x0)) * (width - left - right);
  const y = (v) => top + (1 - v / ymax) * (height - top - bottom);
  for (const frac of [0, 0.5, 1]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(ymax * frac), y2: y(ymax * frac), stroke: "#d5dbe1" }),
      svg("text", { x: left - 4, y: y(ymax * frac) + 4, "text-anchor": "end", fill: "#1b1f24" }, format(ymax * frac) + unit));
  }
  const axisY = height - (legend ? 24 : 6);
  chart.append(svg("text", { x: left, y: axisY, fill: "#1b1f24" }, ends[0]),
    svg("text", { x: width - right, y: axisY, "text-anchor": "end", fill: "#1b1f24" }, ends[1]));
  if (legend) {
    // Which colour is which series: a swatch and the name, left to right under the axis.
    let at = left;
    series.forEach((s, i) => {
      chart.append(svg("line", { x1: at, x2: at + 14, y1: height - 8, y2: height - 8, stroke: COLORS[i % COLORS.length], "stroke-width": 3 }),
        svg("text", { x: at + 18, y: height - 4, fill: "#1b1f24" }, s.name));
      at += 26 + 6.5 * s.name.length;
    });
  }
  series.forEach((s, i) => {
    let d = "", pen = false;
    for (const [t, v] of s.points) {
      if (v === null || !Number.isFinite(v)) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    if (d) chart.append(svg("path", { d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2, "data-series": s.name }, svg("title", {}, s.name)));
  });
  return chart;
}

// A time series: points are [timeMs, value], the axis runs up to now.
export function lineChart({ title, series, unit = "", width = 420, height = 160, format = (v) => v.toFixed(1) }) {
  const times = series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])).map((p) => p[0]));
  const t0 = Math.min(...times, Date.now() - 1000), t1 = Math.max(...times, t0 + 1000);
  return plot({ title, series, unit, width, height, format, domain: [t0, t1], ends: [`${Math.round((t1 - t0) / 1000)}s ago`, "now"] });
}

// Curves over steps (a run's metric per epoch): points are [step, value].
export function stepChart({ title, series, unit = "", width = 420, height = 160, format = (v) => v.toFixed(3) }) {
  const steps = series.flatMap((s) => s.points.map((p) => p[0]));
  const s0 = steps.length ? Math.min(...steps) : 0, s1 = Math.max(...steps, s0 + 1);
  return plot({ title, series, unit, width, height, format, domain: [s0, s1], ends: [`step ${s0}`, `step ${s1}`], legend: true });
}

// The route table as one bar: parts [{label, weight}] summing to 100.
export function splitBar({ title, parts, width = 420, height = 34 }) {
  const desc = parts.map((p) => `${p.label} ${p.weight}%`).join(", ");
  const chart = frame(width, height, title, `Traffic split: ${desc}.`);
  let at = 0;
  parts.forEach((part, i) => {
    const w = (part.weight / 100) * width;
    if (w > 0) {
      chart.append(svg("rect", { x: at, y: 0, width: w, height, fill: COLORS[i % COLORS.length] }, svg("title", {}, `${part.label}: ${part.weight}%`)));
      if (w > 60) chart.append(svg("text", { x: at + 6, y: height / 2 + 4, fill: "#ffffff", "data-bg": COLORS[i % COLORS.length] }, `${part.label} ${part.weight}%`));
    }
    at += w;
  });
  return chart;
}

// A feature's reference and live histograms overlaid: per bin (labels), the share of
// reference rows and of live rows, side by side. reference and live are counts.
export function histogramChart({ title, labels, reference, live, width = 640, height = 200 }) {
  const left = 48, right = 8, top = 8, bottom = 58;
  const share = (counts) => { const total = counts.reduce((a, b) => a + b, 0); return counts.map((c) => (total ? c / total : 0)); };
  const ref = share(reference), now = share(live);
  const liveRows = live.reduce((a, b) => a + b, 0);
  const widest = ref.concat(now).reduce((a, b) => Math.max(a, b), 0);
  const peak = labels.length ? labels[now.indexOf(Math.max(...now))] : "";
  const chart = frame(width, height, title, liveRows ? `Most live rows in ${peak}: ${(Math.max(...now) * 100).toFixed(0)}% against ${(ref[now.indexOf(Math.max(...now))] * 100).toFixed(0)}% of the reference.` : "No live rows in the window.");
  const ymax = niceMax(widest);
  const slot = (width - left - right) / Math.max(labels.length, 1);
  const bar = Math.max(2, slot / 2 - 2);
  const y = (v) => top + (1 - v / ymax) * (height - top - bottom);
  for (const frac of [0, 0.5, 1]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(ymax * frac), y2: y(ymax * frac), stroke: "#d5dbe1" }),
      svg("text", { x: left - 4, y: y(ymax * frac) + 4, "text-anchor": "end", fill: "#1b1f24" }, `${Math.round(ymax * frac * 100)}%`));
  }
  labels.forEach((label, i) => {
    const x = left + i * slot + 1;
    const g = svg("g", { "data-bin": i });
    for (const [series, values, colour, dx] of [["reference", ref, COLORS[0], 0], ["live", now, COLORS[1], bar + 1]]) {
      g.append(svg("rect", { x: x + dx, y: y(values[i]), width: bar, height: Math.max(0, y(0) - y(values[i])), fill: colour, "data-series": series, "data-share": values[i].toFixed(4) },
        svg("title", {}, `${label}: ${(values[i] * 100).toFixed(1)}% of ${series} rows`)));
    }
    g.append(svg("text", { x: x + bar, y: height - bottom + 14, "text-anchor": "middle", fill: "#1b1f24" }, label.length > 10 ? `${label.slice(0, 9)}…` : label));
    chart.append(g);
  });
  let at = left;
  for (const [name, colour] of [["reference", COLORS[0]], [`live (${liveRows} rows)`, COLORS[1]]]) {
    chart.append(svg("line", { x1: at, x2: at + 14, y1: height - 12, y2: height - 12, stroke: colour, "stroke-width": 6 }),
      svg("text", { x: at + 18, y: height - 8, fill: "#1b1f24" }, name));
    at += 30 + 6.5 * name.length;
  }
  return chart;
}

// Rows (features) by columns (times): cells coloured by adjusted p-value, darker = smaller;
// a cell whose test called drift gets a heavy outline. cells[r][c] = {p, drifted} or null.
export function heatMap({ title, rows, columns, cells, width = 640 }) {
  const left = 150, top = 6, cell = 18, bottom = 22;
  const cw = Math.max(4, Math.min(24, (width - left - 8) / Math.max(columns.length, 1)));
  const height = top + rows.length * cell + bottom;
  const drifted = rows.filter((_, r) => cells[r].some((c) => c && c.drifted));
  const chart = frame(width, height, title, drifted.length ? `Drift in ${drifted.join(", ")}.` : "No feature drifted in these windows.");
  rows.forEach((row, r) => {
    const g = svg("g", { "data-feature": row, "data-drifted": drifted.includes(row) ? "true" : "false" });
    g.append(svg("text", { x: left - 6, y: top + r * cell + 13, "text-anchor": "end", fill: "#1b1f24" }, row.length > 24 ? `${row.slice(0, 23)}…` : row));
    cells[r].forEach((c, i) => {
      const x = left + i * cw, y = top + r * cell;
      if (!c || c.p === null || c.p === undefined) {
        g.append(svg("rect", { x, y, width: cw - 1, height: cell - 2, fill: "#eef1f4" }, svg("title", {}, `${row} at ${columns[i]}: no verdict`)));
        return;
      }
      // -log10(p) from 0 to 6 maps white-ish to deep red.
      const level = Math.min(1, -Math.log10(Math.max(c.p, 1e-12)) / 6);
      const fill = `rgb(${255 - Math.round(level * 92)},${Math.round(242 - level * 220)},${Math.round(235 - level * 208)})`;
      g.append(svg("rect", { x, y, width: cw - 1, height: cell - 2, fill, stroke: c.drifted ? "#1b1f24" : "none", "stroke-width": c.drifted ? 2 : 0, class: c.drifted ? "drifted" : null },
        svg("title", {}, `${row} at ${columns[i]}: adjusted p ${c.p.toPrecision(2)}${c.drifted ? " (drift)" : ""}`)));
    });
    chart.append(g);
  });
  if (columns.length) {
    chart.append(svg("text", { x: left, y: height - 6, fill: "#1b1f24" }, columns[0]),
      svg("text", { x: width - 8, y: height - 6, "text-anchor": "end", fill: "#1b1f24" }, columns.at(-1)));
  }
  return chart;
}

// Nodes in columns left to right ({id, label, column, href?}) and edges [fromId, toId].
export function layeredGraph({ title, nodes, edges, width = 900 }) {
  const columns = Math.max(...nodes.map((n) => n.column)) + 1;
  const boxW = 150, boxH = 40, gapY = 16;
  const perColumn = Array.from({ length: columns }, (_, c) => nodes.filter((n) => n.column === c));
  const height = Math.max(...perColumn.map((c) => c.length)) * (boxH + gapY) + gapY;
  const step = (width - boxW - 20) / Math.max(columns - 1, 1);
  const at = {};
  perColumn.forEach((list, c) => list.forEach((n, i) => {
    at[n.id] = { x: 10 + c * step, y: gapY + i * (boxH + gapY) + (height - list.length * (boxH + gapY) - gapY) / 2 };
  }));
  const desc = edges.map(([a, b]) => `${nodes.find((n) => n.id === a).label} → ${nodes.find((n) => n.id === b).label}`).join("; ");
  const chart = frame(width, height, title, desc || "No lineage recorded.", "chart graph");
  chart.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
    svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#4a5360" }))));
  for (const [a, b] of edges) {
    const p = at[a], q = at[b];
    chart.append(svg("path", { d: `M${p.x + boxW},${p.y + boxH / 2} C${p.x + boxW + 40},${p.y + boxH / 2} ${q.x - 40},${q.y + boxH / 2} ${q.x},${q.y + boxH / 2}`,
      fill: "none", stroke: "#4a5360", "stroke-width": 1.5, "marker-end": "url(#arrow)", "data-edge": `${a}->${b}` }));
  }
  for (const n of nodes) {
    const box = svg("g", { "data-node": n.id, transform: `translate(${at[n.id].x},${at[n.id].y})` },
      svg("rect", { width: boxW, height: boxH, rx: 5, fill: n.fill || "#eef3fa", stroke: "#0a58a8" }),
      svg("text", { x: 8, y: 16, fill: "#4a5360", "data-bg": n.fill || "#eef3fa" }, n.kind),
      svg("text", { x: 8, y: 32, fill: "#1b1f24", "font-weight": 600, "data-bg": n.fill || "#eef3fa" }, n.label.length > 22 ? n.label.slice(0, 21) + "…" : n.label),
      svg("title", {}, `${n.kind}: ${n.label}`));
    chart.append(n.href ? svg("a", { href: n.href }, box) : box);
  }
  return chart;
}
