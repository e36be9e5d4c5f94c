// Rollouts, newest first (GET /rollouts), optionally one endpoint's or only active ones.

import { api } from "./api.js";
import { badge, show, el, fmt, header, link, poll, query, status, table } from "./ui.js";

export const STATE_KIND = { succeeded: "good", rolled_back: "bad", failed: "bad", progressing: "warn", paused: "warn", awaiting_approval: "warn", pending: "warn" };
const PAGE = 25;
let limit = PAGE;

async function tick() {
  const q = query();
  const filter = new URLSearchParams({ limit: String(limit) });
  if (q.get("endpoint")) filter.set("endpoint", q.get("endpoint"));
  if (q.get("active")) filter.set("active", q.get("active"));
  const rollouts = await api(`/rollouts?${filter}`);
  const rows = rollouts.map((r) => [
    link(`/rollouts/${r.id}`, `#${r.id}`), r.endpoint, `${r.model} v${r.candidate_version}`,
    r.stable_version ? `v${r.stable_version}` : "—", r.strategy, badge(r.state.replace("_", " "), STATE_KIND[r.state]),
    `${Math.min(r.step_index + 1, r.steps.length)} of ${r.steps.length}`, fmt.time(r.created_at), r.reason,
  ]);
  const more = rollouts.length === limit && limit < 500
    ? el("div", { class: "pager" }, el("button", { class: "secondary", onclick: () => { limit = Math.min(500, limit + PAGE); tick(); } }, "Show more"))
    : null;
  show(
    table(null, [{ label: "rollout" }, { label: "endpoint" }, { label: "candidate" }, { label: "stable" }, { label: "strategy" }, { label: "state" }, { label: "step" }, { label: "started" }, { label: "reason" }], rows, "No rollouts yet."),
    more);
  status(`${rollouts.length} rollout(s)${q.get("endpoint") ? ` of ${q.get("endpoint")}` : ""}, newest first; refreshed every 3s`);
}

header();
poll(tick, 3000);
