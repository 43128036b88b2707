// Calls to the service's own API (relative URLs, so the page also works under a path prefix), and its
// errors in plain words: what happened, what to do, and the service's own message underneath.

export class ApiError extends Error {
  constructor(title, hint, detail, status, kind) {
    super(title);
    this.title = title;
    this.hint = hint;
    this.detail = detail;
    this.status = status;
    this.kind = kind;
  }
}

const PLAIN = {
  PayloadTooLarge: [
    "The document is too large for this service.",
    "Split it into parts and annotate them one at a time.",
  ],
  BadEncoding: [
    "The file is not UTF-8 text.",
    "Save it as UTF-8 (in most editors: Save as, Encoding: UTF-8) or convert it, for example with " +
      "iconv -f cp1251 -t utf-8, and open it again.",
  ],
  BratFormatError: [
    "The .ann file does not fit the text.",
    "Check that the .ann belongs to this .txt; the service names the first line that does not fit.",
  ],
  Unauthorized: [
    "This service needs an API key.",
    "Enter the key under “API key” and try again; whoever runs the service can give you one.",
  ],
  BundleError: [
    "The model is not ready.",
    "The service is still loading its model or cannot load it. Try again in a minute; if this stays, " +
      "tell whoever runs the service.",
  ],
  InferenceError: [
    "The model failed on this text.",
    "Try again; if it fails again, tell whoever runs the service and quote the error id.",
  ],
  UnsupportedMediaType: ["The service cannot read this kind of file.", "Open a .txt file (and its .ann)."],
  InvalidEntities: ["The annotations do not fit the text.", "Check the offsets named below."],
  InputError: ["The service refused this input.", "The reason is below."],
  ValidationError: ["The service did not understand the request.", "The reason is below."],
};

// Errors from something in front of the service (a proxy), which answer without the service's JSON.
const BY_STATUS = {
  401: PLAIN.Unauthorized,
  403: ["The service refused access.", "Ask whoever runs the service for access."],
  404: ["The service has no such address.", "The page and the service may be of different versions."],
  413: PLAIN.PayloadTooLarge,
  502: ["The service is not answering.", "It may be restarting; try again in a minute."],
  503: PLAIN.BundleError,
  504: ["The service took too long.", "Try a shorter part of the document."],
};

function explain(status, payload) {
  const kind = payload && typeof payload === "object" ? payload.error : null;
  const [title, hint] = PLAIN[kind] ||
    BY_STATUS[status] || [`The service answered with an error (HTTP ${status}).`, "The reason is below."];
  let detail = payload && typeof payload === "object" ? payload.detail : String(payload || "").slice(0, 300);
  if (payload && payload.error_id && !String(detail).includes(payload.error_id)) {
    detail = `${detail} (error id ${payload.error_id})`;
  }
  return new ApiError(title, hint, detail || "", status, kind || `HTTP ${status}`);
}

export async function request(path, { json, form, key, method } = {}) {
  const headers = { Accept: "application/json" };
  if (key) headers["X-API-Key"] = key;
  let body;
  let size = 0;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
    size = body.length;
  } else if (form) {
    body = form;
    for (const value of form.values()) size += value.size || String(value).length;
  }
  let response;
  try {
    response = await fetch(path, { method: method || (body ? "POST" : "GET"), headers, body });
  } catch {
    // A service that refuses a large body may close the connection before the browser has sent it all,
    // which the browser reports as a failed request, not as the service's answer.
    const large = size > 1_000_000;
    throw new ApiError(
      large ? "The service did not accept the document; it may be too large." : "The service did not answer.",
      large
        ? "Split the document into parts and annotate them one at a time."
        : "Check that the service is running and that this computer can reach it, then try again.",
      "",
      0,
      "NetworkError",
    );
  }
  const type = response.headers.get("content-type") || "";
  const payload = type.includes("json")
    ? await response.json().catch(() => null)
    : await response.text().catch(() => "");
  if (!response.ok) throw explain(response.status, payload);
  return payload;
}
