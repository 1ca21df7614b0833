/**
 * Subject layout: `tributary.events.<connection>.<shard>`. Each connection's events are spread
 * over a fixed number of shard subjects by a hash of the messageId, so a given messageId always
 * lands on the same subject. That is what makes exact dedup possible with batched publishes:
 * each shard subject has one writer at a time, guarded by JetStream's expected-last-sequence.
 *
 * DEDUP_SHARDS is part of the stored data's format: changing it would let a retry within the
 * dedup window land on another subject, so it is a constant, not a setting.
 */
export const STREAM = "TRIBUTARY_EVENTS";
export const SUBJECT_ROOT = "tributary.events";
export const DEDUP_SHARDS = 4;

export const connectionSubjects = (connection: string) => `${SUBJECT_ROOT}.${connection}.*`;
export const shardSubject = (connection: string, shard: number) => `${SUBJECT_ROOT}.${connection}.${shard}`;

/** FNV-1a over UTF-16 code units: stable across nodes, runtimes and versions. */
export function shardOf(messageId: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < messageId.length; i++) {
    h ^= messageId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % DEDUP_SHARDS;
}
