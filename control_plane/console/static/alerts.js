// Alerts: pending and firing now (GET /alerts), the rules, and the history a page at a time.

import { api } from "./api.js";
import { badge, show, el, fmt, header, pager, poll, status, table } from "./ui.js";

const LIMIT = 25;
let offset = 0;

async function tick() {
  const [active, rules, history] = await Promise.all([api("/alerts"), api("/alerts/rules"), api(`/alerts/history?limit=${LIMIT}&offset=${offset}`)]);
  const sev = (s) => badge(s, s === "critical" ? "bad" : "warn");
  show(
    el("h2", {}, "Pending and firing"),
    table(null, [{ label: "alert" }, { label: "state" }, { label: "severity" }, { label: "labels" }, { label: "summary" }, { label: "since" }],
      active.map((a) => [a.name, badge(a.state, a.state === "firing" ? "bad" : "warn"), sev(a.severity), Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(" "), a.summary, fmt.time(a.fired_at || a.started_at)]), "nothing pending or firing"),
    el("h2", {}, "Rules"),
    table(null, [{ label: "rule" }, { label: "condition" }, { label: "scope" }, { label: "for", num: true }, { label: "severity" }],
      rules.map((r) => [r.name, `${r.metric} ${r.comparison} ${r.threshold}`, [r.endpoint, r.version ? `v${r.version}` : null].filter(Boolean).join(" ") || "all", `${r.for_s}s`, sev(r.severity)]), "no rules"),
    el("h2", {}, "History"),
    table(null, [{ label: "when" }, { label: "alert" }, { label: "kind" }, { label: "severity" }, { label: "summary" }],
      history.items.map((e) => [fmt.time(e.created_at), e.name, `${e.kind} ${e.state}`, sev(e.severity), e.summary]), "no history"),
    pager(history, (o) => { offset = o; tick(); }, "Alert history"));
  status(`${active.length} active alert(s); refreshed every 5s`);
}

header();
poll(tick, 5000);
