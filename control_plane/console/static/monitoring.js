// Monitoring of one endpoint's version: drift per feature over time as a heat map of
// adjusted p-values, one feature's reference and live histograms overlaid, data-quality
// counters, online accuracy (or MAE) and anomalies, from GET /endpoints/{e}/monitoring
// (and .../monitoring/histograms) polled while the page is open.

import { api } from "./api.js";
import { heatMap, histogramChart, lineChart } from "./charts.js";
import { badge, show, el, fmt, header, poll, pollEvery, query, status, table } from "./ui.js";

const q = query();
const every = pollEvery(5000);
let windowS = Number(q.get("window")) || 30;
let endpoint = q.get("endpoint");
let version = q.get("version");
let feature = q.get("feature");
const KEEP = 60; // columns of the heat map
let columns = []; // [{label, t, drift, accuracy}]
let endpoints = [];

function reset() {
  columns = [];
  const url = new URL(location.href);
  url.searchParams.set("endpoint", endpoint || "");
  url.searchParams.set("version", version || "");
  url.searchParams.set("window", String(windowS));
  if (feature) url.searchParams.set("feature", feature); else url.searchParams.delete("feature");
  history.replaceState(null, "", url);
}

function pickers() {
  const current = endpoints.find((e) => e.name === endpoint);
  const versions = current ? current.routes.map((r) => String(r.version)) : [];
  const select = (id, label, options, value, change) => [
    el("label", { for: id }, label),
    el("select", { id, onchange: (e) => { change(e.target.value); reset(); tick(); } },
      options.map(([v, text]) => el("option", { value: v, selected: v === value }, text)))];
  return el("form", { class: "inline", onsubmit: (e) => e.preventDefault() },
    select("pick-endpoint", "Endpoint", endpoints.map((e) => [e.name, e.name]), endpoint, (v) => { endpoint = v; version = null; }),
    select("pick-version", "Version", versions.map((v) => [v, `v${v}`]), version, (v) => { version = v; }),
    select("pick-window", "Window", [["10", "10 s"], ["30", "30 s"], ["60", "1 min"], ["300", "5 min"]], String(windowS), (v) => { windowS = Number(v); }));
}

function driftSection(latest) {
  const drift = latest.drift || {};
  const names = [...new Set(columns.flatMap((c) => Object.keys((c.drift || {}).features || {})))];
  const predictions = [...new Set(columns.flatMap((c) => Object.keys(((c.drift || {}).prediction || {}).features || {})))];
  const rows = [...names, ...predictions.map((n) => `prediction ${n}`)];
  const cells = rows.map((row) => columns.map((c) => {
    const d = c.drift || {};
    const f = row.startsWith("prediction ") ? ((d.prediction || {}).features || {})[row.slice(11)] : (d.features || {})[row];
    return f ? { p: f.p_value, drifted: f.drifted } : null;
  }));
  const verdictKind = { drift: "bad", ok: "good" }[drift.verdict] || "warn";
  return el("section", { class: "card", "aria-labelledby": "drift-h" },
    el("h2", { id: "drift-h" }, "Drift by feature ", badge(drift.verdict || "no data", verdictKind)),
    el("p", { class: "muted" }, drift.reason || `${drift.samples || 0} rows in the last ${windowS}s; ${drift.correction || "adjusted"} p-values at alpha ${fmt.num(drift.alpha, 3)}; darker is smaller, outlined cells drifted.`),
    rows.length ? heatMap({ title: `Drift of ${endpoint} v${version} per feature over time (adjusted p-value)`, rows, columns: columns.map((c) => c.label), cells })
      : el("p", { class: "muted" }, "No drift test yet: the version needs a reference profile and traffic."),
    drift.drifted_features && drift.drifted_features.length ? el("p", { id: "drifted" }, "Drifted now: ", drift.drifted_features.join(", ")) : null,
    table("Latest window", [{ label: "feature" }, { label: "test" }, { label: "statistic", num: true }, { label: "adjusted p", num: true }, { label: "rows", num: true }, { label: "verdict" }],
      Object.entries(drift.features || {}).map(([n, f]) => [n, f.test, fmt.num(f.statistic, 3), fmt.p(f.p_value), String(f.n), f.drifted ? badge("drift", "bad") : badge("ok", "good")])));
}

function binLabels(f) {
  const e = f.edges.map((x) => fmt.num(x, Math.abs(x) < 10 ? 2 : 0));
  if (f.kind === "categorical") return [...e, "other"];
  return f.edges.length ? [`< ${e[0]}`, ...e.slice(1).map((x, i) => `${e[i]}–${x}`), `≥ ${e.at(-1)}`] : ["all"];
}

// One feature's reference and live histograms (inputs, then prediction features).
function featureSection(histograms, latest) {
  const groups = [["", (histograms.inputs || {}).features || {}], ["prediction ", (histograms.predictions || {}).features || {}]];
  const all = groups.flatMap(([prefix, features]) => Object.entries(features).map(([name, f]) => [`${prefix}${name}`, f]));
  if (!all.length) return null;
  const drifted = ((latest.drift || {}).drifted_features || [])[0];
  if (!feature || !all.some(([name]) => name === feature)) feature = drifted && all.some(([n]) => n === drifted) ? drifted : all[0][0];
  const [, chosen] = all.find(([name]) => name === feature);
  return el("section", { class: "card", "aria-labelledby": "feature-h" },
    el("h2", { id: "feature-h" }, `Feature ${feature}: reference and live`),
    el("form", { class: "inline", onsubmit: (e) => e.preventDefault() },
      el("label", { for: "pick-feature" }, "Feature"),
      el("select", { id: "pick-feature", onchange: (e) => { feature = e.target.value; reset(); tick(); } },
        all.map(([name]) => el("option", { value: name, selected: name === feature }, name)))),
    histogramChart({ title: `${feature} of ${endpoint} v${version}: reference and last ${windowS}s`, labels: binLabels(chosen), reference: chosen.reference, live: chosen.live }),
    el("p", { class: "muted" }, `Bars are shares of rows per reference bin (${chosen.kind}); the live rows are the last ${windowS}s.`));
}

function qualitySection(quality) {
  const qy = quality || {};
  const counters = [["rows", qy.rows], ["missing values", qy.missing], ["rows with missing", qy.rows_with_missing], ["out of range", qy.out_of_range],
    ["rows out of support", qy.rows_out_of_support], ["unusual confidence", qy.unusual_confidence], ["rejected requests", qy.rejected_total]];
  return el("section", { class: "card", "aria-labelledby": "quality-h" },
    el("h2", { id: "quality-h" }, "Data quality"),
    qy.problem ? el("p", { class: "status error" }, qy.problem) : null,
    table(null, [{ label: "counter" }, { label: `last ${windowS}s`, num: true }], counters.map(([k, v]) => [k, String(v ?? 0)])),
    table("Per feature", [{ label: "feature" }, { label: "missing", num: true }, { label: "out of range", num: true }],
      Object.entries(qy.features || {}).map(([n, f]) => [n, String(f.missing), String(f.out_of_range)])),
    table("Rejected by reason", [{ label: "reason" }, { label: "requests", num: true }], Object.entries(qy.rejected || {}).map(([k, v]) => [k, String(v)]), "none"));
}

function accuracySection(accuracy, anomalies) {
  const a = accuracy || {};
  const metric = a.task === "regression" ? "mae" : "accuracy";
  const points = columns.map((c) => [c.t, c.accuracy && c.accuracy[metric] !== undefined ? c.accuracy[metric] : null]);
  const judged = Object.entries(anomalies || {}).filter(([, v]) => v && typeof v === "object");
  return el("section", { class: "card", "aria-labelledby": "accuracy-h" },
    el("h2", { id: "accuracy-h" }, a.task === "regression" ? "Online MAE" : "Online accuracy"),
    el("p", { class: "muted" }, `${a.labelled || 0} labelled pair(s) in the window${a.invalid ? `, ${a.invalid} invalid` : ""}`),
    lineChart({ title: `${endpoint} v${version} online ${metric} over time`, series: [{ name: metric, points }], format: (v) => v.toFixed(3) }),
    el("h3", {}, "Anomalies"),
    table(null, [{ label: "signal" }, { label: "value", num: true }, { label: "baseline", num: true }, { label: "z", num: true }, { label: "verdict" }],
      judged.map(([k, j]) => [k, fmt.num(j.value, 3), fmt.num(j.baseline, 3), fmt.num(j.z, 2), j.anomalous ? badge("anomalous", "bad") : badge("normal", "good")]), "not enough history yet"),
    el("p", { class: "muted" }, `unusual predictions: ${(anomalies || {}).unusual_predictions ?? 0}, out-of-support rate ${fmt.pct((anomalies || {}).out_of_support_rate)}`));
}

async function tick() {
  endpoints = await api("/endpoints");
  if (!endpoint || !endpoints.some((e) => e.name === endpoint)) endpoint = endpoints.length ? endpoints[0].name : null;
  const current = endpoints.find((e) => e.name === endpoint);
  if (current && (!version || !current.routes.some((r) => String(r.version) === version))) {
    version = String((current.routes.find((r) => !r.shadow && r.weight > 0) || current.routes[0]).version);
  }
  if (!endpoint) {
    show(el("p", {}, "No endpoints to monitor."));
    return;
  }
  const [answer, histograms] = await Promise.all([api(`/endpoints/${encodeURIComponent(endpoint)}/monitoring?window=${windowS}`),
    api(`/endpoints/${encodeURIComponent(endpoint)}/monitoring/histograms?version=${encodeURIComponent(version)}&window=${windowS}`).catch(() => ({}))]);
  const latest = answer.versions[version] || {};
  const now = new Date();
  columns.push({ label: now.toLocaleTimeString(), t: now.getTime(), drift: latest.drift, accuracy: latest.accuracy });
  if (columns.length > KEEP) columns.shift();
  document.getElementById("title").textContent = `Monitoring: ${endpoint} v${version}`;
  show(pickers(), driftSection(latest), featureSection(histograms, latest), el("div", { class: "grid" }, qualitySection(latest.quality), accuracySection(latest.accuracy, latest.anomalies)));
  status(`each column is one ${windowS}s window, read every ${every / 1000}s (updated ${now.toLocaleTimeString()})`);
}

header();
poll(tick, every);
