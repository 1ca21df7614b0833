/**
 * Subject layout: `tributary.events.<connection>.<shard>` (with partitions, one more token: see
 * StreamLayout). Each connection's events are spread
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

/** A connection's messages in the single-stream layout (a pipeline consumer's filter there). */
export const connectionSubjects = (connection: string) => `${SUBJECT_ROOT}.${connection}.*`;
/** Every message of a connection whatever the layout (a partition's subjects have one more token): for `nats sub`. */
export const connectionWildcard = (connection: string) => `${SUBJECT_ROOT}.${connection}.>`;
/** A shard's subject in the single-stream layout (partitions: see {@link StreamLayout.subject}). */
export const shardSubject = (connection: string, shard: number) => `${SUBJECT_ROOT}.${connection}.${shard}`;

/** FNV-1a over UTF-16 code units: stable across nodes, runtimes and versions. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * MurmurHash3's finaliser: FNV-1a of strings that differ only in their last character (a
 * connection's four shards) leaves the low bits correlated, so no connection ever had all four
 * shards on one partition; mixed, about 1 name in N³ does, as the layout promises.
 */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export function shardOf(messageId: string): number {
  return fnv1a(messageId) % DEDUP_SHARDS;
}

/** The most events streams a deployment may have: DEDUP_SHARDS × connections is the useful bound. */
export const MAX_PARTITIONS = 64;

/**
 * Where a connection's shards are stored. One partition (the default, and every deployment before
 * partitions existed): the stream TRIBUTARY_EVENTS on `tributary.events.<connection>.<shard>`.
 * N partitions: N streams `TRIBUTARY_EVENTS_P0` … `P<N-1>`, each with its own leader, and a shard's
 * subject names its partition in a last token, `tributary.events.<connection>.<shard>.p<k>`, so
 * each stream owns a wildcard (`tributary.events.*.*.p<k>`) and `nats sub 'tributary.events.>'`
 * still shows everything. A shard's partition is a stable hash of (connection, shard): a
 * messageId always lands on one shard subject of one stream, which is what keeps dedup exact.
 */
export interface StreamLayout {
  readonly partitions: number;
  /** The streams' names, by partition. */
  readonly streams: readonly string[];
  partitionOf(connection: string, shard: number): number;
  /** The partitions holding some shard of the connection (a pipeline has a consumer on each). */
  partitionsOf(connection: string): number[];
  subject(connection: string, shard: number): string;
  /** The stream a shard subject is stored in. */
  streamOfSubject(subject: string): string;
  /** The stream's subjects, as created. */
  streamSubjects(partition: number): string[];
  /** A pipeline consumer's filter on the connection's messages in one partition's stream. */
  consumerFilter(connection: string, partition: number): string;
}

export function streamLayout(partitions = 1): StreamLayout {
  if (!Number.isInteger(partitions) || partitions < 1 || partitions > MAX_PARTITIONS)
    throw new RangeError(`stream partitions must be an integer from 1 to ${MAX_PARTITIONS}, not ${partitions}`);
  if (partitions === 1)
    return {
      partitions,
      streams: [STREAM],
      partitionOf: () => 0,
      partitionsOf: () => [0],
      subject: shardSubject,
      streamOfSubject: () => STREAM,
      streamSubjects: () => [`${SUBJECT_ROOT}.>`],
      consumerFilter: connectionSubjects,
    };
  const streams = Array.from({ length: partitions }, (_, k) => partitionStream(k));
  const partitionOf = (connection: string, shard: number) => mix32(fnv1a(`${connection}\u0000${shard}`)) % partitions;
  return {
    partitions,
    streams,
    partitionOf,
    partitionsOf: (connection) =>
      [...new Set(Array.from({ length: DEDUP_SHARDS }, (_, s) => partitionOf(connection, s)))].sort((a, b) => a - b),
    subject: (connection, shard) => `${shardSubject(connection, shard)}.p${partitionOf(connection, shard)}`,
    streamOfSubject: (subject) => {
      const k = Number(subject.slice(subject.lastIndexOf(".p") + 2));
      if (!Number.isInteger(k) || k < 0 || k >= partitions) throw new Error(`not a partition subject: ${subject}`);
      return streams[k]!;
    },
    streamSubjects: (k) => [`${SUBJECT_ROOT}.*.*.p${k}`],
    consumerFilter: (connection, k) => `${SUBJECT_ROOT}.${connection}.*.p${k}`,
  };
}

/** Partition k's stream when there are several. */
export const partitionStream = (k: number) => `${STREAM}_P${k}`;

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
