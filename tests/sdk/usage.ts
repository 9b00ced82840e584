// Type-checks (tsc --strict --noEmit) against api.d.ts, which tests/it/sdk.rs generates from the
// served /openapi.json with openapi-typescript. Each line states part of the contract a TypeScript
// client relies on; a document that breaks it fails to compile.
import type { components, operations } from "./api";

type S = components["schemas"];

// Typed answers, with enums for status and trigger.
export const accepted: S["Accepted"] = { id: "0d9c7c8e-0000-0000-0000-000000000000", status: "queued", status_url: "/v1/invocations/x" };
// @ts-expect-error: a status is one of the documented values
export const notAStatus: S["InvocationStatus"] = "done";
export const trigger: S["Trigger"] = "webhook";
export const published: S["EventPublished"] = { id: "e", topic: "orders.created", invocations: [{ function: "f", id: "i" }], status_url: "/v1/events/e" };
export const event: S["EventView"]["payload_base64"] = null;
export const build: S["BuildView"]["status"] = "succeeded";
export const key: S["CallbackKey"]["key"] = "whsec_x";
export const subs: S["SubscriptionList"]["subscriptions"] = [];
export const rejected: S["RejectionList"]["rejections"] = [];
export const failed: S["ErrorDetail"] = { code: "build_failed", message: "m", log: "tail", build_id: "b" };

// Request bodies: typed where JSON, bytes where binary, none where the method carries none.
export const hook: NonNullable<operations["create_webhook"]["requestBody"]>["content"]["application/json"] = { function: "f", scheme: "standard" };
export const sub: NonNullable<operations["subscribe"]["requestBody"]>["content"]["application/json"] = { pattern: "orders.*" };
export const rotate: NonNullable<operations["rotate_webhook"]["requestBody"]>["content"]["application/json"] = { secret: "s", grace_seconds: 60 };
export const nightly: S["NewSchedule"]["payload"] = "nightly";
export const asObject: S["NewSchedule"]["payload"] = { n: 1 };
export const bytes: NonNullable<operations["invoke_sync"]["requestBody"]>["content"]["application/octet-stream"] = "raw";
export const getHasNoBody: operations["invoke_url_get"]["requestBody"] = undefined;
export const headHasNoBody: operations["invoke_url_path_head"]["requestBody"] = undefined;

// Headers taken and answered.
export const asyncHeaders: NonNullable<operations["invoke_async"]["parameters"]["header"]> = { "Idempotency-Key": "k", "X-Callback-Url": "https://example.org/done" };
export const answered: operations["invoke_sync"]["responses"][200]["headers"]["X-Granda-Status"] = "succeeded";

// A function's URL may answer any status.
export const own: operations["invoke_url"]["responses"]["default"]["content"]["application/octet-stream"] = "body";
// The build stream, line by line.
export const line: S["BuildStreamLine"] = { log: "step 1" };
