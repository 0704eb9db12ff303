// A minimal product that embeds Better Auth with its SCIM plugin, as usher's tests meet it:
// Better Auth on a SQLite file (better-sqlite3, which Better Auth drives through Kysely), the
// plugin's defaults, and one code-defined provisioning connection whose bearer token is given
// at start. Migrations run at start. Every SCIM exchange is logged as one JSON line
// (method, path, status, request body, answer body), so a test can show what was said.
//
//   NODE_ENV=production SCIM_PORT=8080 SCIM_TOKEN=secret SCIM_DATABASE=/tmp/app.db node server.mjs
//
// The tests run it with NODE_ENV=production, as a product is run: Better Auth's rate limiter
// (100 requests per 10 s and path) is then on.
//
// SCIM base: http://127.0.0.1:<port>/api/auth/scim/v2

import { randomBytes } from "node:crypto";
import { createServer } from "node:http";

import { scim } from "@better-auth/scim";
import Database from "better-sqlite3";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return value;
}

const port = Number(required("SCIM_PORT"));
const token = required("SCIM_TOKEN");
const database = required("SCIM_DATABASE");
const baseURL = `http://127.0.0.1:${port}`;

const auth = betterAuth({
  baseURL,
  // Sessions do not outlive a test run: a fresh secret per start is enough.
  secret: process.env.BETTER_AUTH_SECRET ?? randomBytes(32).toString("hex"),
  database: new Database(database),
  emailAndPassword: { enabled: true },
  telemetry: { enabled: false },
  plugins: [
    scim({
      connections: [
        {
          id: "usher",
          credentials: [{ type: "bearer", id: "usher-token", token }],
        },
      ],
    }),
  ],
});

const { runMigrations } = await getMigrations(auth.options);
await runMigrations();

async function text(message) {
  try {
    const body = await message.clone().text();
    if (!body) return undefined;
    try {
      return JSON.parse(body);
    } catch {
      return body;
    }
  } catch {
    return undefined;
  }
}

const handler = toNodeHandler(async (request) => {
  const url = new URL(request.url);
  const scimRequest = url.pathname.includes("/scim/v2");
  const sent = scimRequest ? await text(request) : undefined;
  const response = await auth.handler(request);
  if (scimRequest) {
    console.log(
      JSON.stringify({
        method: request.method,
        path: url.pathname + url.search,
        status: response.status,
        request: sent,
        response: await text(response),
      }),
    );
  }
  return response;
});

createServer(handler).listen(port, "127.0.0.1", () => {
  console.log(`better-auth-scim listening on ${baseURL}/api/auth/scim/v2`);
});
