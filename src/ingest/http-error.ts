/**
 * An error that reaches a client carries its own answer (as Elysia's errors do): the intake
 * answers `respond(e.status, { error: e.message }, e.headers)` and never asks what kind of error
 * it holds. `code` names the error for logs and tests without reading its wording.
 */
export abstract class HttpError extends Error {
  abstract readonly status: number;
  abstract readonly code: string;
  /** Headers the answer must carry (Retry-After, Connection: close…). */
  get headers(): Record<string, string> {
    return {};
  }
}

export const isHttpError = (e: unknown): e is HttpError => e instanceof HttpError;

/** A JSON answer: `Content-Type`, then the given headers in order (later ones win). */
export function respond(status: number, body: unknown, ...headers: Record<string, string>[]): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: Object.assign({ "Content-Type": "application/json" }, ...headers),
  });
}
