// facematch's page: the tabs, the API key field, and the two tabs' set-up (verify.js, gallery.js).

import { apiKey, call, setApiKey } from "./api.js";
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

// The key field shows when the server asks for a key (a 401 from /health or any later call).
function setUpKey() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  input.value = apiKey();
  input.addEventListener("input", () => setApiKey(input.value.trim()));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
  });
  document.addEventListener("facematch:unauthorized", () => {
    form.hidden = false;
  });
  call("GET", "health").catch((error) => {
    if (error.status === 401) form.hidden = false;
  });
}

setUpTabs();
setUpKey();
setUpVerify();
setUpGallery();
