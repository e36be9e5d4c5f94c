// Alerts: pending and firing now (GET /alerts), the rules with their silences, and the
// history a page at a time. A deployer may silence a rule for a while (its alerts are still
// evaluated, listed and recorded; no receiver is told) or end its silence.

import { api, mayAct } from "./api.js";
import { badge, confirmAction, show, el, fmt, header, pager, poll, status, table } from "./ui.js";

const LIMIT = 25;
const CHANGES = 10;  // the latest changes to rules: who silenced, disabled or deleted what
const DURATIONS = [["1 hour", 3600], ["4 hours", 4 * 3600], ["1 day", 86400], ["7 days", 7 * 86400]];
let offset = 0;
let who = null;
let actionError = null;
const chosen = {};  // rule → the duration picked, kept across refreshes

async function act(rule, silence) {
  const seconds = chosen[rule] || DURATIONS[0][1];
  const label = DURATIONS.find(([, s]) => s === seconds)[0];
  const reason = await confirmAction(silence ? `Silence rule ${rule} for ${label}: its alerts notify no receiver until then.`
    : `End the silence of rule ${rule}: its next firing or resolution is notified.`);
  if (reason === null) return;
  actionError = null;
  try {
    await api(`/alerts/rules/${encodeURIComponent(rule)}/silence`, silence
      ? { method: "POST", body: { duration_s: seconds, reason: reason || "silenced from the console" } }
      : { method: "DELETE" });
  } catch (error) {
    actionError = error.message || String(error);
  }
  await tick();
}

function silenceControls(r) {
  if (!mayAct(who, "deployer")) return null;
  if (r.silence) return el("button", { type: "button", class: "secondary", "data-action": "unsilence", onclick: () => act(r.name, false) }, "Unsilence");
  const pick = el("select", { "aria-label": `silence ${r.name} for`, onchange: (e) => { chosen[r.name] = Number(e.target.value); } },
    DURATIONS.map(([label, seconds]) => el("option", { value: seconds, selected: (chosen[r.name] || DURATIONS[0][1]) === seconds }, label)));
  return el("span", { class: "actions" }, pick, el("button", { type: "button", "data-action": "silence", onclick: () => act(r.name, true) }, "Silence"));
}

async function tick() {
  const [active, rules, history, changes] = await Promise.all([api("/alerts"), api("/alerts/rules"), api(`/alerts/history?limit=${LIMIT}&offset=${offset}`), api(`/alerts/changes?limit=${CHANGES}`)]);
  const sev = (s) => badge(s, s === "critical" ? "bad" : "warn");
  const silenced = (r) => (r.silence ? `until ${fmt.time(r.silence.until)}${r.silence.reason ? ` (${r.silence.reason}, ${r.silence.created_by})` : ` (${r.silence.created_by})`}` : "—");
  const ruleColumns = [{ label: "rule" }, { label: "condition" }, { label: "scope" }, { label: "for", num: true }, { label: "severity" }, { label: "silenced" }, { label: "changed by" }];
  if (mayAct(who, "deployer")) ruleColumns.push({ label: "action" });
  show(
    el("h2", {}, "Pending and firing"),
    table(null, [{ label: "alert" }, { label: "state" }, { label: "severity" }, { label: "labels" }, { label: "summary" }, { label: "since" }],
      active.map((a) => [a.name, el("span", {}, badge(a.state, a.state === "firing" ? "bad" : "warn"), a.silenced_until ? [" ", badge("silenced", "")] : null), sev(a.severity), Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(" "), a.summary, fmt.time(a.fired_at || a.started_at)]), "nothing pending or firing"),
    el("h2", {}, "Rules"),
    actionError ? el("p", { class: "status error", role: "alert" }, actionError) : null,
    table(null, ruleColumns,
      rules.map((r) => [r.name, `${r.metric} ${r.comparison} ${r.threshold}`, [r.endpoint, r.version ? `v${r.version}` : null].filter(Boolean).join(" ") || "all", `${r.for_s}s`, sev(r.severity), silenced(r), r.updated_by || r.created_by, silenceControls(r)].slice(0, ruleColumns.length)), "no rules"),
    el("h2", {}, "Changes to rules"),
    el("div", { id: "rule-changes" }, table(`the last ${CHANGES}; modelplane alerts changes lists them all`,
      [{ label: "when" }, { label: "rule" }, { label: "change" }, { label: "by" }, { label: "for" }],
      changes.items.map((c) => [fmt.time(c.created_at), c.name, c.action, c.actor, c.subject]), "no changes")),
    el("h2", {}, "History"),
    table(null, [{ label: "when" }, { label: "alert" }, { label: "kind" }, { label: "severity" }, { label: "summary" }],
      history.items.map((e) => [fmt.time(e.created_at), e.name, `${e.kind} ${e.state}`, sev(e.severity), e.summary]), "no history"),
    pager(history, (o) => { offset = o; tick(); }, "Alert history"));
  status(`${active.length} active alert(s); refreshed every 5s`);
}

header().then((answer) => { who = answer; poll(tick, 5000); });
