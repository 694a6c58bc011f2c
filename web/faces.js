// A photo preview with every face's box drawn over it (from POST /faces), the primary one marked.

import { call, formOf } from "./api.js";

const urls = new WeakMap();

// Show `blob` in `figure` (replacing what was there), without boxes yet.
export function showPhoto(figure, blob, label) {
  const old = figure.querySelector("img");
  if (old && urls.has(old)) URL.revokeObjectURL(urls.get(old));
  figure.replaceChildren();
  const frame = document.createElement("div");
  frame.className = "frame";
  const image = document.createElement("img");
  const url = URL.createObjectURL(blob);
  urls.set(image, url);
  image.src = url;
  image.alt = label;
  frame.append(image);
  const caption = document.createElement("figcaption");
  caption.textContent = blob.name || label;
  figure.append(frame, caption);
}

// Ask /faces for every face of `blob` and draw their boxes over the preview in `figure`.
export async function drawFaces(figure, blob) {
  const found = await call("POST", "faces", formOf({ photo: blob }));
  const frame = figure.querySelector(".frame");
  frame.querySelectorAll(".box").forEach((box) => box.remove());
  const [width, height] = found.image_size;
  found.faces.forEach((face, index) => {
    const [x1, y1, x2, y2] = face.box;
    const box = document.createElement("div");
    box.className = face.primary ? "box primary" : "box";
    box.style.left = `${(100 * Math.max(0, x1)) / width}%`;
    box.style.top = `${(100 * Math.max(0, y1)) / height}%`;
    box.style.width = `${(100 * (Math.min(width, x2) - Math.max(0, x1))) / width}%`;
    box.style.height = `${(100 * (Math.min(height, y2) - Math.max(0, y1))) / height}%`;
    const what = `face ${index + 1}${face.primary ? " (primary)" : ""}, probability ${face.probability.toFixed(3)}`;
    box.title = what;
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", what);
    frame.append(box);
  });
  const caption = figure.querySelector("figcaption");
  const count = found.count === 1 ? "1 face" : `${found.count} faces`;
  caption.textContent = `${blob.name || "photo"}: ${count} found${found.count > 1 ? ", the primary one marked" : ""}`;
  return found;
}
