import { createHmac } from "node:crypto";

/** The header carrying the Unix time (seconds) the signature was made at. */
export const TIMESTAMP_HEADER = "X-Tributary-Timestamp";

/**
 * The signature of a webhook request: hex HMAC-SHA256 of `<timestamp>.<body>` keyed by the secret.
 * The timestamp is signed with the body, so a receiver that refuses old timestamps refuses a
 * captured request replayed later (the README's Destinations section has the receiver's side).
 */
export function sign(secret: string, timestamp: number, body: string): string {
  return createHmac("sha256", secret).update(`${timestamp}.${body}`).digest("hex");
}
