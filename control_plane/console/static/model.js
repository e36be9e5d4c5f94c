// One model: its policy, aliases and versions (stage, aliases, status), a page at a time.

import { api } from "./api.js";
import { badge, show, el, failed, fmt, header, link, pager, params, query, status, table } from "./ui.js";

const name = params().model;
const LIMIT = Number(query().get("limit")) || 25;
const STAGE_KIND = { production: "good", staging: "warn", archived: "" };

async function load(offset) {
  try {
    const [model, page] = await Promise.all([api(`/models/${encodeURIComponent(name)}`),
      api(`/models/${encodeURIComponent(name)}/versions?limit=${LIMIT}&offset=${offset}`)]);
    document.getElementById("title").textContent = `Model ${model.name}`;
    const rows = page.items.map((v) => [
      link(`/models/${encodeURIComponent(name)}/versions/${v.version}`, `v${v.version}`),
      badge(v.stage, STAGE_KIND[v.stage]), v.aliases.join(", ") || "—",
      v.status === "rejected" ? badge("rejected", "bad") : badge("ready", "good"),
      Object.entries(v.manifest.metrics).map(([k, x]) => `${k} ${fmt.num(x, 3)}`).join(", ") || "—",
      v.created_by, fmt.time(v.created_at),
    ]);
    show(
      el("dl", { class: "kv" },
        el("dt", {}, "description"), el("dd", {}, model.description || "—"),
        el("dt", {}, "owner"), el("dd", {}, model.owner),
        el("dt", {}, "aliases"), el("dd", {}, Object.entries(model.aliases).map(([a, v]) => `${a} → v${v}`).join(", ") || "—"),
        el("dt", {}, "approval"), el("dd", {}, model.policy.require_approval_for_production ? "required for production" : "not required")),
      el("h2", {}, "Versions"),
      table(null, [{ label: "version" }, { label: "stage" }, { label: "aliases" }, { label: "status" }, { label: "metrics" }, { label: "registered by" }, { label: "registered" }], rows, "No versions."),
      pager(page, load, "Versions"));
    status(`${page.total} version(s)`);
  } catch (error) {
    failed(error);
  }
}

header();
load(0);
