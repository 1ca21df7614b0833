import { hostname } from "node:os";
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import type { Bus } from "../../bus/connection.ts";
import { consumerName } from "../../bus/subjects.ts";
import { sleep } from "../../sink/http/rate-limit.ts";
import { log } from "../../util/log.ts";

/**
 * One active sender per export pipeline in the cluster. Nodes would otherwise split the consumer's
 * messages between them and a user's events would race to the destination. The holder of a key in
 * a JetStream KV bucket sends; the other nodes wait as standbys and poll for the key. The bucket's
 * max age is the lease's time to live: a holder renews its key well within it (compare-and-set on
 * the revision), a dead holder's key expires on the server's clock (no clock of a node is trusted),
 * and a holder that cannot renew in time stops sending before its lease could have expired.
 */
export const LEASE_BUCKET = "tributary_export_leases";

export interface LeaseOptions {
  /** Time to live of an unrenewed lease: how long a dead holder's pipeline waits before a standby sends. */
  ttlMs: number;
  /** How often the holder renews, and a standby tries to take it. */
  renewMs: number;
}

export const leaseDefaults: LeaseOptions = { ttlMs: 10_000, renewMs: 2_000 };

/** Who holds a lease: this process, as `/v1/pipelines` and the logs show it. */
export const holderId = `${hostname()}:${process.pid}:${Math.random().toString(36).slice(2, 8)}`;

const buckets = new WeakMap<Bus, Promise<KV>>();

/** The bucket, created once per connection. Its max age is fixed when created: the first node's ttl holds. */
export function leaseBucket(bus: Bus, o: LeaseOptions = leaseDefaults): Promise<KV> {
  let kv = buckets.get(bus);
  if (!kv) {
    kv = new Kvm(bus.js).create(LEASE_BUCKET, { history: 1, ttl: o.ttlMs, replicas: bus.options.streamReplicas });
    kv.catch(() => buckets.delete(bus));
    buckets.set(bus, kv);
  }
  return kv;
}

/** KV keys allow `[-/_=.a-zA-Z0-9]`: the consumer's name is already of those characters. */
export const leaseKey = (connection: string, pipeline: string) => consumerName(connection, pipeline);

export class Lease {
  #revision = 0;
  #renewedAt = 0;
  #timer?: ReturnType<typeof setInterval>;
  #lost?: () => void;

  constructor(
    readonly kv: KV,
    readonly key: string,
    readonly options: LeaseOptions = leaseDefaults,
  ) {}

  get held(): boolean {
    return this.#revision > 0;
  }

  /** Waits until this node holds the lease (or `signal` aborts); `lost` runs if it is ever lost. */
  async acquire(signal: AbortSignal, lost: () => void): Promise<void> {
    for (;;) {
      signal.throwIfAborted();
      try {
        this.#revision = await this.kv.create(this.key, holderId);
        this.#renewedAt = performance.now();
        break;
      } catch {
        // Held by another node (or the bucket is unreachable): try again soon.
        await sleep(this.options.renewMs, signal);
      }
    }
    this.#lost = lost;
    this.#timer = setInterval(() => void this.#renew(), this.options.renewMs);
  }

  async #renew(): Promise<void> {
    if (!this.held) return;
    try {
      this.#revision = await this.kv.update(this.key, holderId, this.#revision);
      this.#renewedAt = performance.now();
    } catch (e) {
      // Taken over (another revision), or NATS unreachable: once the lease may have expired,
      // another node may be sending, so this one stops.
      const taken = e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamWrongLastSequence;
      if (taken || performance.now() - this.#renewedAt > this.options.ttlMs - this.options.renewMs) {
        log.warn("export lease lost: this node stops sending", { lease: this.key, error: String(e) });
        this.#drop();
      }
    }
  }

  #drop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#revision = 0;
    const lost = this.#lost;
    this.#lost = undefined;
    lost?.();
  }

  /** Gives the lease up at once, so a standby takes over without waiting for it to expire. */
  async release(): Promise<void> {
    const revision = this.#revision;
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#revision = 0;
    this.#lost = undefined;
    if (revision) await this.kv.delete(this.key, { previousSeq: revision }).catch(() => {});
  }
}
