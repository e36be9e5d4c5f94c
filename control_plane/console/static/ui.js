// Small DOM helpers shared by the pages: elements, tables, paging, polling, the sign-in
// strip, the confirmation dialog and number formats.

import { ApiError, UI, setToken, token, whoami } from "./api.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector) => document.querySelector(selector);
export const content = () => document.getElementById("content");
// Replace the page's content with `nodes` (null and false ones left out).
export const show = (...nodes) => content().replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
export const params = () => document.getElementById("main").dataset;
export const query = () => new URLSearchParams(location.search);
// The polling interval a page's ?every= asks for, within 1 s and 60 s: a link with every=1
// would have the reader's browser call the API back to back with their token.
export const pollEvery = (fallback) =>
  Math.min(60000, Math.max(1000, Number(query().get("every")) || fallback));
export const link = (path, text) => el("a", { href: UI + path }, text);

export function status(message, error = false) {
  const node = document.getElementById("status");
  node.textContent = message || "";
  node.classList.toggle("error", error);
}

// Show what went wrong, with the way out when it is a missing or weak token.
export function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    status("", false);
    const box = document.getElementById("status");
    box.classList.add("error");
    box.replaceChildren(`${error.message} — `, link("/signin", "sign in with a token"));
    return;
  }
  status(error.message || String(error), true);
}

// A table: columns [{label, num?}] and rows of cells (strings or nodes).
export function table(caption, columns, rows, empty = "none") {
  const head = el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.num ? "num" : null }, c.label)));
  const body = rows.length
    ? rows.map((cells) => el("tr", {}, cells.map((cell, i) => el("td", { class: columns[i].num ? "num" : null }, cell ?? "—"))))
    : [el("tr", {}, el("td", { colspan: columns.length, class: "muted" }, empty))];
  return el("table", {}, caption ? el("caption", { class: "muted" }, caption) : null, el("thead", {}, head), el("tbody", {}, body));
}

// Previous/next over a Page answer ({items,total,limit,offset}); `go(offset)` reloads.
export function pager(page, go, label) {
  const last = Math.min(page.offset + page.items.length, page.total);
  return el("nav", { class: "pager", "aria-label": `${label} pages` },
    el("button", { class: "secondary", disabled: page.offset === 0, onclick: () => go(Math.max(0, page.offset - page.limit)) }, "Previous"),
    el("span", {}, page.total ? `${page.offset + 1}–${last} of ${page.total}` : "0 of 0"),
    el("button", { class: "secondary", disabled: last >= page.total, onclick: () => go(page.offset + page.limit) }, "Next"));
}

// Run `tick` now and every `ms` while the page is visible; errors show and polling goes on.
export function poll(tick, ms) {
  let timer = null;
  const run = async () => {
    try {
      await tick();
    } catch (error) {
      failed(error);
    }
    timer = setTimeout(run, ms);
  };
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { clearTimeout(timer); timer = null; } else if (timer === null) run();
  });
  run();
}

// The confirmation dialog: resolves to the reason typed, or null when cancelled.
export function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-reason").value = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm" ? document.getElementById("confirm-reason").value : null);
    }, { once: true });
    dialog.showModal();
  });
}

export const fmt = {
  num: (v, digits = 1) => (v === null || v === undefined || Number.isNaN(v) ? "—" : Number(v).toFixed(digits)),
  pct: (v, digits = 1) => (v === null || v === undefined ? "—" : `${(v * 100).toFixed(digits)}%`),
  ms: (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(v < 10 ? 2 : 1)} ms`),
  time: (iso) => (iso ? new Date(iso).toLocaleString() : "—"),
  p: (v) => (v === null || v === undefined ? "—" : v < 0.001 ? v.toExponential(1) : v.toFixed(3)),
};

export function badge(text, kind) {
  return el("span", { class: `badge ${kind || ""}`.trim() }, text);
}

// The header's strip: who the token is, and sign-in or sign-out.
export async function header() {
  const who = await whoami();
  const strip = document.getElementById("who");
  const signOut = () => { setToken(null); location.href = `${UI}/signin`; };
  if (who && token()) {
    strip.replaceChildren(el("span", {}, `${who.name} (${who.role})`),
      el("button", { type: "button", onclick: signOut }, "Sign out"));
  } else {
    strip.replaceChildren(el("span", {}, who ? "anonymous reader" : "not signed in"),
      el("a", { href: `${UI}/signin` }, "Sign in"));
  }
  return who;
}
