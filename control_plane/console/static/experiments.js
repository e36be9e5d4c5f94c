// Experiments and their runs (parameters and latest metrics), a page at a time; runs ticked
// and compared (?runs=ID,ID): parameters side by side, last and best metrics, and each
// metric's curve over steps with one line per run.

import { api } from "./api.js";
import { stepChart } from "./charts.js";
import { content, show, el, failed, fmt, header, pager, query, status, table } from "./ui.js";

const LIMIT = 25;
const MAX_COMPARED = 6;  // one colour each
const MAX_CURVES = 6;

const here = (changes) => {
  const next = query();
  for (const [key, value] of Object.entries(changes)) if (value) next.set(key, value); else next.delete(key);
  return `?${next}`;
};

function place(id, section) {
  section.id = id;
  const old = document.getElementById(id);
  if (old) old.replaceWith(section); else content().append(section);
}

async function runs(experiment, offset = 0) {
  const page = await api(`/experiments/${encodeURIComponent(experiment)}/runs?limit=${LIMIT}&offset=${offset}`);
  const keys = [...new Set(page.items.flatMap((r) => Object.keys(r.latest_metrics)))].slice(0, 6);
  const params = [...new Set(page.items.flatMap((r) => Object.keys(r.params)))].slice(0, 6);
  const ticked = new Set((query().get("runs") || "").split(",").filter(Boolean));
  const compare = el("button", { type: "button", onclick: () => {
    const chosen = [...document.querySelectorAll("#runs input[data-run]:checked")].map((box) => box.dataset.run);
    if (!chosen.length) { status("tick one or more runs to compare", true); return; }
    if (chosen.length > MAX_COMPARED) { status(`compare at most ${MAX_COMPARED} runs at once`, true); return; }
    location.search = here({ runs: chosen.join(",") });
  } }, "Compare ticked runs");
  const pick = (r) => el("input", { type: "checkbox", "data-run": r.id, checked: ticked.has(r.id), "aria-label": `compare run ${r.name || r.id}` });
  place("runs", el("section", { class: "card", "aria-label": `Runs of ${experiment}` },
    el("h2", {}, `Runs of ${experiment}`),
    table(null, [{ label: "compare" }, { label: "run" }, { label: "status" }, ...params.map((p) => ({ label: p })), ...keys.map((k) => ({ label: k, num: true })), { label: "started" }],
      page.items.map((r) => [pick(r), el("a", { href: here({ runs: r.id }) }, r.name || r.id), r.status, ...params.map((p) => JSON.stringify(r.params[p] ?? null)), ...keys.map((k) => fmt.num(r.latest_metrics[k], 4)), fmt.time(r.start_time)]), "no runs"),
    el("div", { class: "actions" }, compare),
    pager(page, (o) => runs(experiment, o).catch(failed), `Runs of ${experiment}`)));
}

// The ticked runs side by side: what differs between them is marked.
async function comparison(ids) {
  const [compared, ...each] = await Promise.all([api(`/runs/compare?ids=${ids.map(encodeURIComponent).join(",")}`), ...ids.map((id) => api(`/runs/${encodeURIComponent(id)}`))]);
  const name = Object.fromEntries(each.map((r) => [r.id, r.name || r.id]));
  const columns = [{ label: "" }, ...ids.map((id) => ({ label: name[id] }))];
  const differs = (values) => new Set(ids.map((id) => JSON.stringify(values[id] ?? null))).size > 1;
  const paramRows = Object.entries(compared.params).sort(([a], [b]) => a.localeCompare(b))
    .map(([key, values]) => [differs(values) ? el("strong", { title: "differs between the runs" }, `${key} ≠`) : key,
      ...ids.map((id) => values[id] === undefined ? null : JSON.stringify(values[id]))]);
  const metricRows = Object.entries(compared.last_metrics).sort(([a], [b]) => a.localeCompare(b))
    .map(([key, values]) => [key, ...ids.map((id) => values[id] === undefined ? null
      : `${fmt.num(values[id], 4)} (best ${fmt.num(compared.best_metrics[key]?.[id], 4)})`)]);
  const keys = Object.keys(compared.last_metrics).sort().slice(0, MAX_CURVES);
  const histories = await Promise.all(keys.map((key) => Promise.all(ids.map((id) =>
    api(`/runs/${encodeURIComponent(id)}/metrics/${encodeURIComponent(key)}`)))));
  const curves = keys.map((key, k) => el("figure", {}, el("figcaption", {}, key), stepChart({ title: key,
    series: ids.map((id, i) => ({ name: name[id], points: histories[k][i].map((m) => [m.step, m.value]) })) })));
  place("compare", el("section", { class: "card", "aria-label": "Compared runs" },
    el("h2", {}, ids.length > 1 ? `${ids.length} runs compared` : `Run ${name[ids[0]]}`),
    el("div", { class: "actions" }, el("a", { href: here({ runs: null }) }, "Close")),
    el("h3", {}, "Parameters"), table(null, columns, paramRows, "no parameters"),
    el("h3", {}, "Metrics: last (best)"), table(null, columns, metricRows, "no metrics"),
    el("h3", {}, "Curves"), el("div", { class: "charts" }, curves.length ? curves : el("p", { class: "muted" }, "no metrics logged"))));
}

async function load(offset) {
  try {
    const page = await api(`/experiments?limit=${LIMIT}&offset=${offset}`);
    const chosen = query().get("experiment");
    show(
      table(null, [{ label: "experiment" }, { label: "runs", num: true }, { label: "created by" }, { label: "created" }],
        page.items.map((e) => [el("a", { href: `?experiment=${encodeURIComponent(e.name)}` }, e.name), String(e.run_count), e.created_by, fmt.time(e.created_at)]), "No experiments yet."),
      pager(page, load, "Experiments"));
    status(`${page.total} experiment(s)`);
    if (chosen) await runs(chosen);
    const ids = (query().get("runs") || "").split(",").filter(Boolean).slice(0, MAX_COMPARED);
    if (ids.length) await comparison(ids);
  } catch (error) {
    failed(error);
  }
}

header();
load(0);
