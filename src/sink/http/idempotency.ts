import { createHash } from "node:crypto";

/**
 * A batch's Idempotency-Key: SHA-256 of its messageIds in order, hex. The same batch gets the same
 * key on every attempt, after a restart and in a replay that groups the events the same way (always
 * with `maxEvents: 1`), so a receiver that honours the header sees each batch once.
 */
export function idempotencyKey(messageIds: string[]): string {
  // Length-prefixed, so no two lists of ids hash the same text; one update (per-id updates cost
  // more than the hash itself).
  let text = "";
  for (const id of messageIds) text += `${id.length}:${id}`;
  return createHash("sha256").update(text).digest("hex");
}
