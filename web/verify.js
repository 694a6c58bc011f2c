// The Verify tab: two photos (chosen, dropped or taken with the camera), every face's box on each,
// then POST /photo_match: the decision, the distance against the threshold, the stage latencies.

import { call, clearError, formOf, showError } from "./api.js";
import { setUpCamera } from "./camera.js";
import { drawFaces, showPhoto } from "./faces.js";

const photos = { reference: null, sample: null };

export function setUpVerify() {
  const error = document.getElementById("verify-error");
  for (const role of Object.keys(photos)) {
    const fieldset = document.getElementById(role);
    const input = document.getElementById(`${role}-file`);
    input.addEventListener("change", () => input.files[0] && choose(role, input.files[0]));
    fieldset.addEventListener("dragover", (event) => {
      event.preventDefault();
      fieldset.classList.add("dragging");
    });
    fieldset.addEventListener("dragleave", () => fieldset.classList.remove("dragging"));
    fieldset.addEventListener("drop", (event) => {
      event.preventDefault();
      fieldset.classList.remove("dragging");
      const file = event.dataTransfer.files[0];
      if (file) choose(role, file);
    });
  }
  setUpCamera({
    start: document.getElementById("camera-start"),
    capture: document.getElementById("camera-capture"),
    video: document.getElementById("camera-video"),
    status: document.getElementById("camera-status"),
    onCapture: (photo) => choose("sample", photo),
  });
  document.getElementById("verify-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(error);
    document.getElementById("verify-result").hidden = true;
    if (!photos.reference || !photos.sample) {
      showError(error, new Error("choose both photos first"));
      return;
    }
    const button = document.getElementById("verify-button");
    button.disabled = true;
    try {
      showMatch(await call("POST", "photo_match", formOf(photos)));
    } catch (failure) {
      showError(error, failure);
    } finally {
      button.disabled = false;
    }
  });

  async function choose(role, blob) {
    photos[role] = blob;
    clearError(error);
    document.getElementById("verify-result").hidden = true;
    const figure = document.querySelector(`#${role} .preview`);
    showPhoto(figure, blob, `${role} photo`);
    try {
      await drawFaces(figure, blob);
    } catch (failure) {
      showError(error, failure);
    }
  }
}

function showMatch(answer) {
  const decision = document.getElementById("decision");
  decision.textContent = answer.match ? "match" : "no match";
  decision.className = answer.match ? "decision yes" : "decision no";
  const top = Math.max(answer.threshold * 2, answer.distance * 1.1);
  const at = (value) => `${Math.min(100, (100 * value) / top)}%`;
  const result = document.getElementById("verify-result");
  result.querySelector(".scale-match").style.width = at(answer.threshold);
  result.querySelector(".scale-threshold").style.left = at(answer.threshold);
  result.querySelector(".scale-distance").style.left = at(answer.distance);
  const relation = answer.distance <= answer.threshold ? "≤" : ">";
  document.getElementById("distance-text").textContent =
    `distance ${answer.distance.toFixed(3)} ${relation} threshold ${answer.threshold.toFixed(3)} (${answer.metric}, model ${answer.model})`;
  const rows = Object.entries(answer.latency_ms).map(([stage, ms]) => {
    const row = document.createElement("tr");
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = stage;
    const value = document.createElement("td");
    value.textContent = ms.toFixed(1);
    row.append(name, value);
    return row;
  });
  result.querySelector("#latency tbody").replaceChildren(...rows);
  result.hidden = false;
}
