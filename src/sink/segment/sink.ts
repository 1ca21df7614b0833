import type { DestinationOptions } from "../../config/destination.ts";
import { type Encoder, ExportSink, type ExportSinkOptions } from "../http/export-sink.ts";

/**
 * The Segment HTTP Tracking API's batch call: `POST {url}/v1/batch` with `{"batch": [...]}` and
 * Basic auth with the write key as user name. Segment, a RudderStack data plane and a Tributary
 * node all take it. No `sentAt` is sent, here or in the events (see segmentBody): the receiver then
 * keeps each event's `timestamp`, already corrected for the first sender's clock, as it is.
 */
export function segmentEncoder(d: DestinationOptions): Encoder {
  const auth = `Basic ${Buffer.from(`${d.writeKey ?? ""}:`).toString("base64")}`;
  return {
    url: `${d.url.replace(/\/+$/, "")}/v1/batch`,
    method: "POST",
    request(events) {
      const body = `{"batch":[${events.join(",")}]}`;
      return { body, headers: { "Content-Type": "application/json", Authorization: auth } };
    },
  };
}

/**
 * What the segment destination sends of a stored event when the pipeline has no transform: the
 * first hop's `sentAt` would make the receiver correct `timestamp` for clock skew a second time,
 * and `receivedAt` is the receiver's to set.
 */
export function segmentBody(event: Record<string, unknown>): Record<string, unknown> {
  const { sentAt: _sentAt, receivedAt: _receivedAt, ...rest } = event;
  return rest;
}

/** A Segment-compatible destination (`type: segment`). */
export const segmentSink = (d: DestinationOptions, o: Omit<ExportSinkOptions, "destination" | "encoder"> = {}) =>
  new ExportSink({ ...o, destination: d, encoder: segmentEncoder(d) });
