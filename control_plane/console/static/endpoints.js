// Endpoints: each endpoint's route table, replicas, traffic split and live per-version
// statistics (requests/s, error rate, p50/p95/p99) from GET /endpoints/{e}/stats, the
// charts starting with the Monitor's last five minutes (GET /endpoints/{e}/stats/history).

import { api } from "./api.js";
import { lineChart, splitBar } from "./charts.js";
import { badge, show, el, fmt, header, link, poll, pollEvery, query, status, table } from "./ui.js";

const every = pollEvery(2000);
const windowS = Number(query().get("window")) || 10;
const KEEP_MS = 5 * 60 * 1000;
const history = {}; // "endpoint/version" -> [{t, rps, errorRate, p50, p95, p99}]
let replicas = {};
let cluster = null; // GET /cluster (any token): each replica's state and node; null without one
let ticks = 0;

function parseReplicas(text) {
  const found = {};
  for (const match of text.matchAll(/^modelplane_replicas\{([^}]*)\}\s+(\S+)$/gm)) {
    const labels = Object.fromEntries([...match[1].matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    found[`${labels.endpoint}/${labels.version}`] = Number(match[2]);
  }
  return found;
}

// The last five minutes from the Monitor, once per endpoint: the charts start full.
const seeded = new Set();
async function seed(endpoint) {
  if (seeded.has(endpoint)) return;
  seeded.add(endpoint);
  try {
    const answer = await api(`/endpoints/${encodeURIComponent(endpoint)}/stats/history?window=300&step=5`);
    for (const [version, points] of Object.entries(answer.versions)) {
      history[`${endpoint}/${version}`] = points.map((p) => ({ t: p.t * 1000, rps: p.throughput_rps, errorRate: p.requests ? p.error_rate : null, p50: p.p50_ms, p95: p.p95_ms, p99: p.p99_ms }));
    }
  } catch (error) {
    seeded.delete(endpoint); // the Monitor may answer next time
  }
}

function record(endpoint, versions, now) {
  for (const [version, s] of Object.entries(versions)) {
    const key = `${endpoint}/${version}`;
    const series = (history[key] ||= []);
    series.push({ t: now, rps: s.throughput_rps, errorRate: s.requests ? s.error_rate : null, p50: s.p50_ms, p95: s.p95_ms, p99: s.p99_ms });
    while (series.length && series[0].t < now - KEEP_MS) series.shift();
  }
}

function versionCharts(endpoint, version, stats) {
  const series = history[`${endpoint}/${version}`] || [];
  const pts = (f) => series.map((p) => [p.t, p[f]]);
  const routed = stats ? stats.requests : 0;
  const pinned = stats && routed ? (stats.pinned_requests + stats.sticky_requests) / routed : null;
  return el("section", { class: "card", "data-version": version, "aria-label": `${endpoint} version ${version}` },
    el("h3", {}, `v${version}`),
    el("p", { class: "muted" }, stats
      ? `${fmt.num(stats.throughput_rps)} req/s · errors ${fmt.pct(stats.error_rate)} · p50 ${fmt.ms(stats.p50_ms)} · p95 ${fmt.ms(stats.p95_ms)} · p99 ${fmt.ms(stats.p99_ms)} · pinned/sticky ${fmt.pct(pinned)}`
      : "no requests in the window"),
    lineChart({ title: `${endpoint} v${version} requests per second`, series: [{ name: "req/s", points: pts("rps") }], format: (v) => v.toFixed(0) }),
    lineChart({ title: `${endpoint} v${version} error rate`, series: [{ name: "error rate", points: pts("errorRate").map(([t, v]) => [t, v === null ? null : v * 100]) }], unit: "%" }),
    lineChart({ title: `${endpoint} v${version} latency p50, p95, p99`, series: ["p50", "p95", "p99"].map((q) => ({ name: q, points: pts(q) })), unit: " ms" }),
    el("div", { class: "legend" }, el("span", { class: "c0" }, "p50"), el("span", { class: "c1" }, "p95"), el("span", { class: "c2" }, "p99")));
}

function card(endpoint, stats) {
  const routes = endpoint.routes;
  const serving = endpoint.serving;
  const state = serving ? badge(serving.state, serving.state === "applied" ? "good" : serving.state === "failed" ? "bad" : "warn") : badge("unknown");
  const rows = routes.map((r) => [
    `v${r.version}`, r.shadow ? "shadow" : `${r.weight}%`,
    String(replicas[`${endpoint.name}/${r.version}`] ?? "—"),
    `${r.batching.max_batch_size} / ${r.batching.batch_wait_timeout_ms} ms`,
    link(`/monitoring?endpoint=${encodeURIComponent(endpoint.name)}&version=${r.version}`, "drift & quality"),
  ]);
  const parts = routes.filter((r) => !r.shadow).map((r) => ({ label: `v${r.version}`, weight: r.weight }));
  const versions = routes.map((r) => String(r.version));
  return el("section", { class: "card endpoint", "data-endpoint": endpoint.name, "aria-labelledby": `ep-${endpoint.name}` },
    el("h2", { id: `ep-${endpoint.name}` }, endpoint.name, " ", state),
    el("p", { class: "muted" }, `model `, link(`/models/${encodeURIComponent(endpoint.model)}`, endpoint.model),
      ` · ${endpoint.placement} · generation ${endpoint.generation} · `,
      link(`/rollouts?endpoint=${encodeURIComponent(endpoint.name)}`, "rollouts")),
    serving && serving.error ? el("p", { class: "status error" }, serving.error) : null,
    splitBar({ title: `${endpoint.name} traffic split`, parts }),
    table(null, [{ label: "version" }, { label: "weight" }, { label: "replicas", num: true }, { label: "batch size / wait" }, { label: "monitoring" }], rows),
    replicaTable(endpoint.name),
    el("div", { class: "grid" }, versions.map((v) => versionCharts(endpoint.name, v, stats[v]))));
}

// Each replica's health (Serve's state) and node, where the token may read the cluster.
function replicaTable(name) {
  if (!cluster) return null;
  const mine = cluster.replicas.filter((r) => r.endpoint === name);
  const kind = (state) => (state === "RUNNING" ? "good" : ["STARTING", "UPDATING", "RECOVERING", "PENDING_MIGRATION"].includes(state) ? "warn" : "bad");
  return el("section", { "aria-label": `${name} replicas` },
    table(null, [{ label: "replica" }, { label: "serves" }, { label: "health" }, { label: "node" }],
      mine.map((r) => [r.replica_id.slice(0, 12), r.version ? `v${r.version}` : "every version", badge(r.state, kind(r.state)), r.node_address || "—"]),
      "no replica"));
}

async function tick() {
  const endpoints = await api("/endpoints");
  if (ticks++ % 5 === 0) {
    replicas = parseReplicas(await api("/metrics", { text: true }).catch(() => ""));
    cluster = await api("/cluster").catch(() => null);
  }
  const now = Date.now();
  const stats = {};
  await Promise.all(endpoints.map(async (e) => {
    try {
      await seed(e.name);
      const answer = await api(`/endpoints/${encodeURIComponent(e.name)}/stats?window=${windowS}`);
      stats[e.name] = answer.versions;
      record(e.name, answer.versions, now);
    } catch (error) {
      stats[e.name] = {}; // the Monitor is unavailable: routes still show
    }
  }));
  const wanted = query().get("endpoint");
  const shown = wanted ? endpoints.filter((e) => e.name === wanted) : endpoints;
  show(...(shown.length ? shown.map((e) => card(e, stats[e.name])) : [el("p", {}, "No endpoints. Deploy one with `modelplane deploy`.")]));
  status(`${endpoints.length} endpoint(s); statistics over the last ${windowS}s, refreshed every ${every / 1000}s (updated ${new Date(now).toLocaleTimeString()})`);
}

header();
poll(tick, every);
