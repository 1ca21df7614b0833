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

/**
 * The durable consumer of one pipeline: `tributary-<connection>--<pipeline>`, each name escaped
 * so the pair can be read back from the name (names are injective). Letters, digits and `_` stay;
 * every other byte of the UTF-8 name becomes `-` and two lower-case hex digits, so a lone `-` never
 * appears in an escaped name and `--` separates the two. A name too long for JetStream (255)
 * keeps the connection and gives the pipeline as `-h` and a SHA-256 prefix instead (`h` is no hex
 * digit, so this never reads as an escape); `bun run check` refuses a collision among those.
 *
 * Earlier versions named it `tributary_<connection>_<pipeline with [^A-Za-z0-9_-] as _>`, which
 * `shop_eu`/`all` and `shop`/`eu_all` (or `orders v2` and `orders_v2`) shared: see
 * `legacyConsumerName`, which the node migrates from. New names start with `tributary-`, legacy
 * ones with `tributary_`, so one can never be taken for the other.
 */
export function consumerName(connection: string, pipeline: string): string {
  const name = `tributary-${escapeName(connection)}--${escapeName(pipeline)}`;
  if (name.length <= MAX_CONSUMER_NAME) return name;
  const hash = new Bun.CryptoHasher("sha256").update(pipeline).digest("hex").slice(0, 32);
  return `tributary-${escapeName(connection)}---h${hash}`;
}

const MAX_CONSUMER_NAME = 200;

/** The durable name of earlier versions: not injective, kept only to find and migrate old consumers. */
export const legacyConsumerName = (connection: string, pipeline: string) =>
  `tributary_${connection}_${pipeline.replace(/[^A-Za-z0-9_-]/g, "_")}`;

function escapeName(s: string): string {
  let out = "";
  for (const ch of s) {
    if (/^[A-Za-z0-9_]$/.test(ch)) out += ch;
    else for (const b of Buffer.from(ch, "utf8")) out += "-" + b.toString(16).padStart(2, "0");
  }
  return out;
}
