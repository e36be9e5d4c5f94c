// Experiments and their runs (parameters and latest metrics), a page at a time.

import { api } from "./api.js";
import { content, show, el, failed, fmt, header, pager, query, status, table } from "./ui.js";

const LIMIT = 25;

async function runs(experiment, offset = 0) {
  const page = await api(`/experiments/${encodeURIComponent(experiment)}/runs?limit=${LIMIT}&offset=${offset}`);
  const keys = [...new Set(page.items.flatMap((r) => Object.keys(r.latest_metrics)))].slice(0, 6);
  const params = [...new Set(page.items.flatMap((r) => Object.keys(r.params)))].slice(0, 6);
  const section = el("section", { class: "card", "aria-label": `Runs of ${experiment}` },
    el("h2", {}, `Runs of ${experiment}`),
    table(null, [{ label: "run" }, { label: "status" }, ...params.map((p) => ({ label: p })), ...keys.map((k) => ({ label: k, num: true })), { label: "started" }],
      page.items.map((r) => [r.name || r.id, r.status, ...params.map((p) => JSON.stringify(r.params[p] ?? null)), ...keys.map((k) => fmt.num(r.latest_metrics[k], 4)), fmt.time(r.start_time)]), "no runs"),
    pager(page, (o) => runs(experiment, o).catch(failed), `Runs of ${experiment}`));
  const old = document.getElementById("runs");
  section.id = "runs";
  if (old) old.replaceWith(section); else content().append(section);
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
  } catch (error) {
    failed(error);
  }
}

header();
load(0);
