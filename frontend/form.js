/** The start form: the init message it describes, and the start image (picker, drag and drop, preview). */

import { prepareStartImage } from "./image.js";
import * as ui from "./ui.js";

const $ = (id) => document.getElementById(id);

/** The access token typed in (once the server asked for one). */
export function accessToken() {
  return !$("token-row").hidden && $("token").value ? $("token").value : undefined;
}

/** The `init` message for the form's current values (the seed is checked by the caller). */
export function buildInit(startImage) {
  const init = { type: "init", prompt: $("prompt").value.trim() };
  if (startImage) init.image = startImage.dataUrl;
  const seedText = $("seed").value.trim();
  if (seedText !== "") init.seed = Number.parseInt(seedText, 10);
  if ($("upsample").checked && !$("upsample").disabled) init.upsample = true;
  if ($("size").value) init.size = $("size").value;
  const token = accessToken();
  if (token) init.token = token;
  return init;
}

/** Prepare `file` and show it; `setImage` gets the prepared image (or null when it is removed). */
async function useImage(file, setImage) {
  let image;
  try {
    image = await prepareStartImage(file);
  } catch (err) {
    ui.showMessage(`Start image not used: ${err.message}.`, "warn");
    return;
  }
  setImage(image);
  $("image-thumb").src = image.dataUrl;
  $("image-caption").textContent = `${image.width}×${image.height}, ${Math.round(image.bytes / 1024)} KB`;
  $("image-preview").hidden = false;
  ui.showMessage("Start image ready: press Start (or Restart) to use it.", "info");
}

export function wireImagePicker(setImage) {
  $("image-file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) useImage(file, setImage);
  });
  $("image-clear").addEventListener("click", () => {
    setImage(null);
    $("image-preview").hidden = true;
    $("image-thumb").removeAttribute("src");
    $("image-file").value = "";
  });
}

export function wireDragAndDrop(setImage) {
  const stage = $("stage");
  const veil = $("drop-veil");
  let depth = 0;
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    veil.hidden = false;
    stage.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) {
      veil.hidden = true;
      stage.classList.remove("dragging");
    }
  });
  document.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    veil.hidden = true;
    stage.classList.remove("dragging");
    const file = [...(event.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) useImage(file, setImage);
    else ui.showMessage("Drop an image file (JPEG or PNG) to use it as the start frame.", "warn");
  });
}
