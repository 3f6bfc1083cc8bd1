// The gateway's JSON API, with the API key the person typed (kept for this browser tab only).

const KEY = "likeness.apiKey";

export class Unauthorised extends Error {}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  forget: () => sessionStorage.removeItem(KEY),
};

async function call(path, options = {}) {
  const headers = { ...(options.headers ?? {}), "X-API-Key": apiKey.get() ?? "" };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 || response.status === 403) {
    throw new Unauthorised(`the gateway refused the key (${response.status})`);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = JSON.stringify((await response.json()).detail ?? detail);
    } catch { /* not JSON */ }
    throw new Error(`${options.method ?? "GET"} ${path}: ${response.status} ${detail}`);
  }
  return response;
}

export async function getJson(path, query = {}) {
  const params = new URLSearchParams(Object.entries(query).filter(([, value]) => value));
  const url = params.size ? `${path}?${params}` : path;
  return (await call(url)).json();
}

export async function postJson(path, body) {
  const response = await call(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.json();
}

// Images need the key too, so they come as blobs shown through object URLs, fetched once per tab.
const imageUrls = new Map();

export function imageUrl(sha256) {
  if (!imageUrls.has(sha256)) {
    const url = call(`/v1/images/${encodeURIComponent(sha256)}`)
      .then((response) => response.blob())
      .then((blob) => URL.createObjectURL(blob));
    url.catch(() => imageUrls.delete(sha256));
    imageUrls.set(sha256, url);
  }
  return imageUrls.get(sha256);
}

/** An <img> for an ImageRef (a reference or a shot); its pixels arrive when the blob does. */
export function picture(ref, alt, className = "") {
  const img = document.createElement("img");
  img.alt = alt;
  img.className = className;
  if (ref.width && ref.height) {
    img.width = ref.width;
    img.height = ref.height;
  }
  imageUrl(ref.sha256).then(
    (url) => { img.src = url; },
    () => { img.alt = `${alt} (could not be loaded)`; img.classList.add("broken"); },
  );
  return img;
}
