// facematch's page: the tabs, the API key field, and the two tabs' set-up (verify.js, gallery.js).

import { access, apiKey, call, setApiKey } from "./api.js";
import { setUpGallery } from "./gallery.js";
import { setUpVerify } from "./verify.js";

function setUpTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    }
  };
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(index + step + tabs.length) % tabs.length];
      select(next);
      next.focus();
    });
  });
}

// The key field shows when the server asks for a key (a 401 from GET key or any later call);
// with a key, the page shows only what it may do (its roles) and says which galleries.
function setUpKey() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  input.value = apiKey();
  input.addEventListener("input", () => setApiKey(input.value.trim()));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    loadGrant(form);
  });
  document.addEventListener("facematch:unauthorized", () => {
    form.hidden = false;
  });
  loadGrant(form);
}

async function loadGrant(form) {
  const note = document.getElementById("key-grant");
  let grant;
  try {
    grant = await call("GET", "key");
  } catch (error) {
    if (error.status === 401) form.hidden = false;
    return;
  }
  access.id = grant.id;
  access.roles = new Set(grant.roles);
  access.galleries = grant.galleries;
  for (const element of document.querySelectorAll("[data-role]")) {
    element.hidden = !element.dataset.role.split(" ").some((role) => access.roles.has(role));
  }
  const selected = document.querySelector("[role=tab][aria-selected=true]");
  if (selected && selected.hidden) document.querySelector("[role=tab]:not([hidden])")?.click();
  note.hidden = grant.keys !== "on";
  note.textContent = `Key ${grant.id}: ${grant.roles.join(", ")} on galleries ${grant.galleries.join(", ")}.`;
}

setUpTabs();
setUpKey();
setUpVerify();
setUpGallery();
