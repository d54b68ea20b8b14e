/** Prepares a start image: decode, downscale to a bounded size, re-encode as a JPEG data URL. */

export const MAX_SIDE = 1280;
const QUALITY = 0.88;

/** Largest size with the same aspect ratio whose longer side is at most `maxSide`. */
export function fitWithin(width, height, maxSide = MAX_SIDE) {
  const scale = Math.min(1, maxSide / Math.max(width, height));
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

function blobToDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/**
 * @param {File|Blob} file  an image the browser can decode
 * @returns {Promise<{dataUrl: string, width: number, height: number, bytes: number}>}
 */
export async function prepareStartImage(file) {
  if (file.type && !file.type.startsWith("image/")) {
    throw new Error(`"${file.name || "file"}" is ${file.type}, expected an image (JPEG or PNG)`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new Error(`could not decode "${file.name || "image"}"; use a JPEG or PNG`);
  }
  const { width, height } = fitWithin(bitmap.width, bitmap.height);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000"; // transparent PNG areas become black, not undefined
  ctx.fillRect(0, 0, width, height);
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", QUALITY));
  return { dataUrl: await blobToDataUrl(blob), width, height, bytes: blob.size };
}
