// Sign in: a token is checked against GET /whoami and kept for this browser session only.

import { UI, api, setToken, token } from "./api.js";
import { show, el, header, status } from "./ui.js";

async function submit(event) {
  event.preventDefault();
  const value = document.getElementById("token").value.trim();
  const previous = token();
  setToken(value);
  try {
    const who = await api("/whoami");
    status(`signed in as ${who.name} (${who.role})`);
    const next = new URLSearchParams(location.search).get("next");
    location.href = next && next.startsWith(UI) ? next : `${UI}/endpoints`;
  } catch (error) {
    setToken(previous);
    status(`the API did not accept that token: ${error.message}`, true);
  }
}

show(
  el("p", {}, "Paste a token (`modelplane token create`; the admin token is in $MODELPLANE_HOME/admin.token). ",
    "It stays in this browser tab's session storage and is sent only to this control plane's API."),
  el("form", { class: "inline", onsubmit: submit },
    el("label", { for: "token" }, "Token"),
    el("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true, size: 48 }),
    el("button", { type: "submit" }, "Sign in")));
header();
