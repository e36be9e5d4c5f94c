// The console's only door to data: the control plane's REST API, called with the token the
// person signed in with (kept for the browser session). The API decides what each token
// may read and do; the console only shows what it answers.

const TOKEN_KEY = "modelplane.token";
// This file lives at <api>/ui/static/api.js: the API is two folders up, the console one.
export const API = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
export const UI = new URL("../", import.meta.url).pathname.replace(/\/$/, "");

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `the API answered ${status}`);
    this.status = status;
    this.body = body;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  whoamiAnswer = null;
}

function headers(extra) {
  const h = { accept: "application/json", ...extra };
  const t = token();
  if (t) h.authorization = `Bearer ${t}`;
  return h;
}

// GET (or any method with `body` as JSON) on an API path such as "/endpoints".
export async function api(path, { method = "GET", body, text = false } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "content-type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(API + path, init);
  if (text && response.ok) return response.text();
  const payload = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

let whoamiAnswer = null;

// Who the token is ({name, role}); anonymous callers are readers while reads are open.
// null when the API refuses to say (reads need a token and none, or a bad one, is kept).
export async function whoami() {
  if (!whoamiAnswer) whoamiAnswer = api("/whoami").catch(() => null);
  return whoamiAnswer;
}

// The API's role ladder, used only to hide buttons the API would refuse anyway.
const RANK = { reader: 0, trainer: 0, labeler: 1, deployer: 2, approver: 3, admin: 4 };

export function mayAct(who, role) {
  return Boolean(who && who.name !== "anonymous" && RANK[who.role] >= RANK[role]);
}
