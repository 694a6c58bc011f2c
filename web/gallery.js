// The Enrol and identify tab: a gallery (picked or typed), enrol a subject's photo, identify a
// photo among the subjects, list and delete subjects.

import { access, call, clearError, formOf, showError } from "./api.js";

const USED_ITEM = "facematch-galleries";

export function setUpGallery() {
  const error = document.getElementById("gallery-error");
  const galleryInput = document.getElementById("gallery-id");
  const gallery = () => encodeURIComponent(galleryInput.value.trim());
  rememberGallery(null);

  async function attempt(work) {
    clearError(error);
    try {
      await work();
    } catch (failure) {
      showError(error, failure);
    }
  }

  document.getElementById("gallery-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!access.roles.has("enrol")) return; // listing subjects is the enrol role's
    attempt(() => listSubjects(gallery()));
  });

  document.getElementById("enrol-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const subject = document.getElementById("enrol-subject").value.trim();
    const photo = document.getElementById("enrol-file").files[0];
    const result = document.getElementById("enrol-result");
    result.textContent = "";
    attempt(async () => {
      const path = `galleries/${gallery()}/subjects/${encodeURIComponent(subject)}/faces`;
      const added = await call("POST", path, formOf({ photo }));
      result.textContent = `Enrolled a face of ${added.subject} in ${added.gallery} (${added.faces} face${added.faces === 1 ? "" : "s"} now).`;
      rememberGallery(added.gallery);
      await listSubjects(gallery());
    });
  });

  document.getElementById("identify-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const sample = document.getElementById("identify-file").files[0];
    const identified = document.getElementById("identified");
    const table = document.getElementById("candidates");
    identified.textContent = "";
    table.hidden = true;
    attempt(async () => {
      const answer = await call("POST", `galleries/${gallery()}/identify`, formOf({ sample }));
      identified.textContent = answer.identified
        ? `identified: ${answer.identified}`
        : `no one identified (threshold ${answer.threshold.toFixed(4)})`;
      identified.className = answer.identified ? "decision yes" : "decision no";
      const rows = answer.candidates.map((candidate) =>
        row([candidate.subject, candidate.distance.toFixed(4), candidate.match ? "yes" : "no"]),
      );
      table.querySelector("tbody").replaceChildren(...rows);
      table.hidden = rows.length === 0;
    });
  });

  async function listSubjects(id) {
    const note = document.getElementById("subjects-note");
    const page = await call("GET", `galleries/${id}/subjects?limit=100`);
    const rows = page.subjects.map((subject) => {
      const tr = row([subject.subject, String(subject.faces)]);
      const cell = document.createElement("td");
      tr.append(cell);
      if (!access.roles.has("admin")) return tr; // deleting is the admin role's
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Delete";
      button.setAttribute("aria-label", `Delete subject ${subject.subject}`);
      button.addEventListener("click", () => attempt(() => deleteSubject(id, subject.subject)));
      cell.append(button);
      return tr;
    });
    document.querySelector("#subjects tbody").replaceChildren(...rows);
    note.textContent = rows.length ? (page.next ? "The first 100 subjects." : "") : "No subjects yet.";
  }

  async function deleteSubject(id, subject) {
    if (!window.confirm(`Delete subject ${subject} and all its faces?`)) return;
    const done = await call("DELETE", `galleries/${id}/subjects/${encodeURIComponent(subject)}`);
    await listSubjects(id);
    document.getElementById("subjects-note").textContent =
      `Deleted ${done.deleted.subject} (${done.deleted.faces} face${done.deleted.faces === 1 ? "" : "s"}).`;
  }
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  return tr;
}

// The galleries used in this browser tab, offered in the gallery field's list.
function rememberGallery(id) {
  const used = new Set(JSON.parse(sessionStorage.getItem(USED_ITEM) || "[]"));
  if (id) used.add(id);
  sessionStorage.setItem(USED_ITEM, JSON.stringify([...used]));
  const options = [...used].map((value) => Object.assign(document.createElement("option"), { value }));
  document.getElementById("gallery-ids").replaceChildren(...options);
}
