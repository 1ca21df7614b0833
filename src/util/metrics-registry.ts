import { Registry } from "prom-client";

/**
 * The process's Prometheus registry. Components that count where the work happens (the sink's
 * flush histograms, rate-limit refusals) register their instruments here, at the bottom of the
 * layers; src/ops/metrics.ts adds the scrape-time figures and renders /metrics.
 */
export const registry = new Registry();
