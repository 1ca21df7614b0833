/**
 * CORS for the routes browsers call: which origin an answer names, and the 403 a page can read
 * when its origin is refused.
 */

const EXPOSE = "Retry-After";

/** A connection's `allowedOrigins` admits `origin` (absent: every origin, as Krenalis does for public write keys). */
export const allows = (allowed: string[] | undefined, origin: string) =>
  !allowed || allowed.includes("*") || allowed.includes(origin);

/**
 * CORS headers for an answer. The origin is reflected only when `allowed` admits it (a connection's
 * `allowedOrigins`; absent, every origin). `Access-Control-Allow-Credentials` is sent only with
 * `credentials`: for a request whose key came in its body or query string, the way
 * `navigator.sendBeacon` sends (always with credentials). Fetch and XHR senders put the key in a
 * header and send no cookies.
 */
export function corsHeaders(
  request: Request,
  allowed: string[] | undefined,
  credentials = false,
): Record<string, string> {
  const origin = request.headers.get("origin");
  if (!origin) return {};
  if (!allows(allowed, origin)) return { Vary: "Origin" };
  return readableBy(origin, credentials);
}

/** Headers that let a page on `origin` read the answer (status, body, Retry-After). */
export function readableBy(origin: string, credentials = false): Record<string, string> {
  return {
    "Access-Control-Allow-Origin": origin,
    Vary: "Origin",
    ...(credentials && { "Access-Control-Allow-Credentials": "true" }),
    "Access-Control-Expose-Headers": EXPOSE,
  };
}

/** A browser page's origin that the connection does not allow (the request is refused, 403). */
export function originRefused(request: Request, allowed: string[] | undefined): string | undefined {
  const origin = request.headers.get("origin");
  if (!origin || allows(allowed, origin)) return undefined;
  return origin;
}

/** Longest origin echoed in an answer or a log line (a hostile Origin header could be kilobytes). */
const MAX_ORIGIN_CHARS = 256;
export const clipOrigin = (origin: string) => origin.slice(0, MAX_ORIGIN_CHARS);

/**
 * The 403 for a refused origin. It names the reason and carries CORS headers for that origin, so
 * a page whose request reached the node without a preflight (sendBeacon, `text/plain` with the
 * key in the body or query string, a settings fetch) can read why; the origin check is a guard
 * against other sites using a public write key, not a secret, so saying so costs nothing.
 */
export function originRefusedResponse(origin: string, credentials: boolean): Response {
  const body = {
    error: `origin ${JSON.stringify(clipOrigin(origin))} is not allowed for this connection (allowedOrigins)`,
    reason: "origin_not_allowed",
  };
  return new Response(JSON.stringify(body), {
    status: 403,
    headers: { "Content-Type": "application/json", ...readableBy(origin, credentials) },
  });
}
