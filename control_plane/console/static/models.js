// The registry: models, a page at a time (GET /models).

import { api } from "./api.js";
import { show, el, failed, fmt, header, link, pager, query, status, table } from "./ui.js";

const LIMIT = Number(query().get("limit")) || 25;

async function load(offset) {
  try {
    const page = await api(`/models?limit=${LIMIT}&offset=${offset}`);
    const rows = page.items.map((m) => [
      link(`/models/${encodeURIComponent(m.name)}`, m.name), m.latest_version ? `v${m.latest_version}` : "—",
      Object.entries(m.aliases).map(([a, v]) => `${a} → v${v}`).join(", ") || "—",
      m.policy.require_approval_for_production ? "approval required" : "—", m.owner, fmt.time(m.updated_at),
    ]);
    show(
      table(null, [{ label: "model" }, { label: "latest" }, { label: "aliases" }, { label: "policy" }, { label: "owner" }, { label: "updated" }], rows, "No models registered yet."),
      pager(page, load, "Models"));
    status(`${page.total} model(s)`);
  } catch (error) {
    failed(error);
  }
}

header();
load(0);
