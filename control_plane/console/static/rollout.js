// One rollout, live: its steps as a timeline, every analysis with each check's value,
// threshold and verdict, the failure streak, the decision and its reason, the audit log,
// and (for a token that may act) pause, resume, promote, roll back and abort.

import { api, mayAct } from "./api.js";
import { badge, confirmAction, show, el, failed, fmt, header, link, params, poll, pollEvery, status, table } from "./ui.js";

const id = params().rollout;
const every = pollEvery(2000);
const STATE_KIND = { succeeded: "good", rolled_back: "bad", failed: "bad", progressing: "warn", paused: "warn", awaiting_approval: "warn", pending: "warn" };
const ACTIONS = [
  { verb: "pause", label: "Pause", when: ["pending", "progressing"], say: "Hold traffic at the current step and stop analysing?" },
  { verb: "resume", label: "Resume", when: ["paused"], say: "Continue the rollout? The current step's hold starts again." },
  { verb: "promote", label: "Promote", when: ["progressing", "awaiting_approval"], say: "Skip the remaining steps and promote the candidate?" },
  { verb: "rollback", label: "Roll back", when: ["pending", "progressing", "paused", "awaiting_approval"], say: "Send 100% back to stable now and reject the candidate?", danger: true },
  { verb: "abort", label: "Abort", when: ["pending", "progressing", "paused", "awaiting_approval"], say: "Stop and restore stable without rejecting the candidate?", danger: true },
];
let who = null;
let actionError = null; // the API's refusal of the last action, shown until the next one

function timeline(r) {
  const finished = ["succeeded", "rolled_back", "failed"].includes(r.state);
  return el("ol", { class: "timeline", "aria-label": "Steps" }, r.steps.map((s, i) => {
    const state = i < r.step_index || (finished && r.state === "succeeded") ? "done" : i === r.step_index && !finished ? "current" : "";
    return el("li", { class: state || null, "aria-current": state === "current" ? "step" : null },
      `${i + 1}. ${s.shadow ? "shadow" : `${s.candidate_weight}%`} · hold ${s.hold_s}s`);
  }));
}

function checks(analysis) {
  const rows = Object.entries(analysis.checks || {}).map(([name, c]) => [
    name, Array.isArray(c.value) ? c.value.join(", ") || "none" : fmt.num(c.value, 4),
    Array.isArray(c.limit) ? c.limit.join(", ") || "none" : fmt.num(c.limit, 4),
    // Past its limit without the evidence to fail yet: neither, the next windows decide.
    c.unproven ? badge("unproven", "warn") : badge(c.passed ? "pass" : "fail", c.passed ? "good" : "bad"),
  ]);
  return table(null, [{ label: "check" }, { label: "value", num: true }, { label: "threshold", num: true }, { label: "verdict" }], rows, "no checks (too little traffic)");
}

function analysisBlock(title, a) {
  if (!a || !a.verdict) return el("p", { class: "muted" }, "No analysis of this step yet.");
  const kind = a.verdict === "pass" ? "good" : a.verdict === "fail" ? "bad" : "warn";
  const side = (s) => (s && s.requests !== undefined ? `${s.requests} req, errors ${fmt.pct(s.error_rate)}, p95 ${fmt.ms(s.p95_ms)}` : "—");
  return el("section", { class: "card analysis", "aria-label": title },
    el("h3", {}, title, " ", badge(a.verdict, kind)),
    el("p", {}, a.reason),
    el("p", { class: "muted" }, `step ${a.step_index + 1}, window ${fmt.num(a.window_s, 0)}s, at ${fmt.time(a.at)} · candidate: ${side(a.candidate)} · stable: ${side(a.stable)}`),
    checks(a),
    a.ab_test ? el("p", {}, "A/B test: ", badge(a.ab_test.decision, a.ab_test.decision === "worse" ? "bad" : a.ab_test.decision === "no_worse" ? "good" : "warn"), " ", a.ab_test.reason) : null);
}

function actions(r) {
  if (!mayAct(who, "deployer")) return null;
  const buttons = ACTIONS.filter((a) => a.when.includes(r.state)).map((a) =>
    el("button", { type: "button", class: a.danger ? "danger" : null, "data-action": a.verb, onclick: () => act(a) }, a.label));
  return buttons.length ? el("div", { class: "actions", role: "group", "aria-label": "Rollout actions" }, buttons) : null;
}

async function act(action) {
  const reason = await confirmAction(`${action.label} rollout #${id}: ${action.say}`);
  if (reason === null) return;
  actionError = null;
  try {
    await api(`/rollouts/${id}/${action.verb}`, { method: "POST", body: { reason: reason || `${action.verb} from the console` } });
  } catch (error) {
    actionError = error.message || String(error);
  }
  await tick().catch(failed);
}

async function tick() {
  const [r, events] = await Promise.all([api(`/rollouts/${id}`), api(`/rollouts/${id}/events`)]);
  const limit = (r.spec.analysis || {}).failures_to_rollback;
  const earlier = events.filter((e) => e.data && e.data.analysis && e.data.analysis.at !== (r.last_analysis || {}).at).reverse();
  document.getElementById("title").textContent = `Rollout #${r.id}: ${r.endpoint}`;
  show(
    el("dl", { class: "kv" },
      el("dt", {}, "state"), el("dd", { id: "state" }, badge(r.state.replace("_", " "), STATE_KIND[r.state])),
      el("dt", {}, "candidate"), el("dd", {}, link(`/models/${encodeURIComponent(r.model)}/versions/${r.candidate_version}`, `${r.model} v${r.candidate_version}`)),
      el("dt", {}, "stable"), el("dd", {}, r.stable_version ? `v${r.stable_version}` : "none"),
      el("dt", {}, "strategy"), el("dd", {}, r.strategy),
      el("dt", {}, "step"), el("dd", { id: "step" }, `step ${Math.min(r.step_index + 1, r.steps.length)} of ${r.steps.length}`),
      el("dt", {}, "failure streak"), el("dd", {}, `${r.failures}${limit ? ` of ${limit} to roll back` : ""}`),
      el("dt", {}, "decision"), el("dd", { id: "reason" }, r.reason || "—"),
      el("dt", {}, "started"), el("dd", {}, `${fmt.time(r.created_at)} by ${r.created_by}`),
      el("dt", {}, "finished"), el("dd", {}, fmt.time(r.finished_at))),
    actions(r),
    actionError ? el("p", { class: "status error", role: "alert" }, actionError) : null,
    el("h2", {}, "Steps"), timeline(r),
    el("h2", {}, "Latest analysis"), analysisBlock("Latest analysis", r.last_analysis),
    earlier.length ? el("h2", {}, "Earlier failing analyses") : null,
    earlier.map((e) => analysisBlock(`Analysis at ${fmt.time(e.created_at)}`, e.data.analysis)),
    el("h2", {}, "History"),
    table(null, [{ label: "time" }, { label: "event" }, { label: "from → to" }, { label: "step", num: true }, { label: "actor" }, { label: "reason" }],
      events.slice().reverse().map((e) => [fmt.time(e.created_at), e.kind, e.from_state || e.to_state ? `${e.from_state || "—"} → ${e.to_state || "—"}` : "—", String(e.step_index + 1), e.actor, e.reason])));
  const live = !["succeeded", "rolled_back", "failed"].includes(r.state);
  status(live ? `live: refreshed every ${every / 1000}s (updated ${new Date().toLocaleTimeString()})` : `finished ${fmt.time(r.finished_at)}`);
}

header().then((answer) => { who = answer; poll(tick, every); });
