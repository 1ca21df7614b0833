import { createHash } from "node:crypto";

/**
 * A batch's Idempotency-Key: SHA-256 of its messageIds in order, hex. The same batch gets the same
 * key on every attempt, after a restart and in a replay that groups the events the same way (always
 * with `maxEvents: 1`), so a receiver that honours the header sees each batch once.
 */
export function idempotencyKey(messageIds: string[]): string {
  const h = createHash("sha256");
  // Length-prefixed, so no two lists of ids hash the same text.
  for (const id of messageIds) h.update(`${id.length}:${id}`);
  return h.digest("hex");
}
