// One model version: stage, aliases, status, metrics, approvals, and its lineage as a
// graph (dataset → run → version → deployments → rollouts); approvers approve or reject.

import { ApiError, UI, api, mayAct } from "./api.js";
import { layeredGraph } from "./charts.js";
import { badge, confirmAction, show, el, failed, fmt, header, link, params, status, table } from "./ui.js";

const name = params().model;
const number = Number(params().version);
const base = `/models/${encodeURIComponent(name)}/versions/${number}`;
let who = null;
let actionError = null;

function short(text, n = 12) {
  return text && text.length > n ? text.slice(0, n) : text;
}

export function lineageGraph(lineage, rollouts) {
  const nodes = [], edges = [];
  const l = lineage.lineage;
  const me = { id: "version", kind: "version", label: `${name} v${number}`, column: 2, fill: "#dbe9f8" };
  nodes.push(me);
  if (l.dataset_uri || l.dataset_digest) {
    nodes.push({ id: "dataset", kind: "dataset", label: l.dataset_uri || `sha256:${short(l.dataset_digest)}`, column: 0 });
  }
  if (lineage.run || l.run_id) {
    const run = lineage.run;
    nodes.push({ id: "run", kind: "run", label: run ? `${run.experiment}/${run.name || short(run.id)}` : short(l.run_id), column: 1 });
    if (nodes.some((n) => n.id === "dataset")) edges.push(["dataset", "run"]);
    edges.push(["run", "version"]);
  } else if (nodes.some((n) => n.id === "dataset")) {
    edges.push(["dataset", "version"]);
  }
  if (lineage.parents.length) {
    nodes.push({ id: "parent", kind: "parent version", label: `${name} v${lineage.parents[0]}`, column: 1, href: `${UI}/models/${encodeURIComponent(name)}/versions/${lineage.parents[0]}` });
    edges.push(["parent", "version"]);
  }
  for (const d of lineage.deployments) {
    const id = `deployment-${d.endpoint}`;
    nodes.push({ id, kind: "deployment", label: `${d.endpoint} ${d.shadow ? "shadow" : `${d.weight}%`}`, column: 3, href: `${UI}/endpoints?endpoint=${encodeURIComponent(d.endpoint)}` });
    edges.push(["version", id]);
  }
  for (const r of rollouts) {
    const id = `rollout-${r.id}`;
    nodes.push({ id, kind: "rollout", label: `#${r.id} ${r.endpoint} ${r.state.replace("_", " ")}`, column: 4, href: `${UI}/rollouts/${r.id}` });
    edges.push([nodes.some((n) => n.id === `deployment-${r.endpoint}`) ? `deployment-${r.endpoint}` : "version", id]);
  }
  return layeredGraph({ title: `Lineage of ${name} v${number}`, nodes, edges });
}

async function decide(decision) {
  const comment = await confirmAction(`${decision === "approved" ? "Approve" : "Reject"} ${name} v${number}? The comment is recorded with your name.`);
  if (comment === null) return;
  actionError = null;
  try {
    await api(`${base}/approvals`, { method: "POST", body: { decision, comment } });
  } catch (error) {
    actionError = error.message;
  }
  await load();
}

// The champion: the version the `champion` alias names, else the one in production.
async function champion() {
  try {
    return await api(`/refs/${encodeURIComponent(name)}@champion`);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
  }
  const page = await api(`/models/${encodeURIComponent(name)}/versions?limit=100`);
  return page.items.find((v) => v.stage === "production") || null;
}

async function latestBenchmark(version) {
  const all = await api(`/models/${encodeURIComponent(name)}/versions/${version}/benchmarks`);
  return all.filter((b) => b.status === "succeeded" && b.figures).sort((a, b) => a.started_at.localeCompare(b.started_at)).at(-1) || null;
}

const FIGURES = [
  ["p50", (f) => f.latency_ms.p50, "ms", "lower"], ["p95", (f) => f.latency_ms.p95, "ms", "lower"],
  ["p99", (f) => f.latency_ms.p99, "ms", "lower"], ["highest rate within the p99 target", (f) => f.max_rate_within_p99, "req/s", "higher"],
  ["CPU per request", (f) => f.cpu_ms_per_request, "ms", "lower"], ["resident memory", (f) => f.memory_rss_mb, "MB", "lower"],
  ["errors", (f) => f.errors, "", "lower"],
];

// This version's latest benchmark beside the champion's: each figure, and the ratio to it.
async function performance(v) {
  const [mine, best] = await Promise.all([latestBenchmark(number), champion()]);
  const theirs = best && best.version !== number ? await latestBenchmark(best.version) : null;
  if (!mine && !theirs) return el("p", { class: "muted" }, `No benchmark yet: modelplane models benchmark ${name}:${number}`);
  const value = (b, get) => (b ? get(b.figures) : null);
  const shown = (x, unit) => (x === null || x === undefined ? "—" : `${fmt.num(x, x < 10 ? 2 : 1)}${unit ? ` ${unit}` : ""}`);
  const columns = [{ label: "figure" }, { label: `v${number} (this)`, num: true }];
  if (best && best.version !== number) columns.push({ label: `v${best.version} (champion)`, num: true }, { label: "this ÷ champion", num: true });
  const rows = FIGURES.map(([label, get, unit, better]) => {
    const row = [`${label} (${better} is better)`, shown(value(mine, get), unit)];
    if (columns.length > 2) {
      const a = value(mine, get), b = value(theirs, get);
      row.push(shown(b, unit), a !== null && b ? `${fmt.num(a / b, 2)}×` : "—");
    }
    return row;
  });
  const when = [mine ? `v${number} at ${mine.figures.rate} req/s for ${mine.figures.duration_s}s, ${fmt.time(mine.finished_at)}` : `v${number}: none`,
    columns.length > 2 ? (theirs ? `v${best.version} at ${theirs.figures.rate} req/s, ${fmt.time(theirs.finished_at)}` : `v${best.version}: none`) : null].filter(Boolean);
  return el("section", { "aria-label": "Performance benchmark" }, table(null, columns, rows), el("p", { class: "muted" }, `Latest benchmarks: ${when.join("; ")}.`));
}

async function load() {
  try {
    const [v, lineage, approvals, rollouts] = await Promise.all([api(base), api(`${base}/lineage`), api(`${base}/approvals`),
      api(`/rollouts?limit=500`).then((all) => all.filter((r) => r.model === name && r.candidate_version === number))]);
    const bench = await performance(v);
    const l = lineage.lineage;
    document.getElementById("title").textContent = `${name} v${number}`;
    show(
      el("dl", { class: "kv" },
        el("dt", {}, "stage"), el("dd", {}, v.stage),
        el("dt", {}, "status"), el("dd", {}, v.status === "rejected" ? badge("rejected", "bad") : badge("ready", "good"), v.status_reason ? ` ${v.status_reason}` : ""),
        el("dt", {}, "aliases"), el("dd", {}, v.aliases.join(", ") || "—"),
        el("dt", {}, "registered"), el("dd", {}, `${fmt.time(v.created_at)} by ${v.created_by} (${v.created_by_subject})`),
        el("dt", {}, "artifact"), el("dd", {}, el("code", {}, `sha256:${v.artifact_digest}`), ` ${v.artifact_size} bytes`),
        el("dt", {}, "task"), el("dd", {}, v.manifest.task),
        el("dt", {}, "dataset"), el("dd", {}, l.dataset_uri || "—", l.dataset_digest ? ` (sha256:${short(l.dataset_digest, 16)})` : ""),
        el("dt", {}, "run"), el("dd", {}, lineage.run ? `${lineage.run.experiment} / ${lineage.run.name || lineage.run.id} (${lineage.run.status})` : l.run_id || "—"),
        el("dt", {}, "code"), el("dd", {}, l.code_commit ? `${short(l.code_commit)}${l.code_branch ? ` on ${l.code_branch}` : ""}` : "—")),
      el("h2", {}, "Lineage"), lineageGraph(lineage, rollouts),
      el("h2", {}, "Performance"), bench,
      el("h2", {}, "Metrics"),
      table(null, [{ label: "metric" }, { label: "value", num: true }], Object.entries(v.manifest.metrics).map(([k, x]) => [k, fmt.num(x, 4)]), "none recorded"),
      el("h2", {}, "Approvals"),
      table(null, [{ label: "decision" }, { label: "approver" }, { label: "comment" }, { label: "when" }],
        approvals.map((a) => [badge(a.decision, a.decision === "approved" ? "good" : "bad"), `${a.approver} (${a.approver_subject})`, a.comment, fmt.time(a.created_at)]), "none yet"),
      mayAct(who, "approver") ? el("div", { class: "actions", role: "group", "aria-label": "Approval" },
        el("button", { type: "button", "data-action": "approve", onclick: () => decide("approved") }, "Approve"),
        el("button", { type: "button", class: "danger", "data-action": "reject", onclick: () => decide("rejected") }, "Reject")) : null,
      actionError ? el("p", { class: "status error", role: "alert" }, actionError) : null,
      el("p", {}, link(`/models/${encodeURIComponent(name)}`, `All versions of ${name}`)));
    status("");
  } catch (error) {
    failed(error);
  }
}

header().then((answer) => { who = answer; load(); });
