// Runs the official @jupyterhub/binderhub-client (from npm, unchanged) against a gateway.
// Usage: node binderhub_client.mjs <build endpoint URL, e.g. http://127.0.0.1:8585/build/>
//        <provider spec, e.g. git/<url-escaped repo>/<ref>> [build_only]
// Prints every event the client yields as one JSON line; exits 0 after `ready`, 1 otherwise.
import { BinderRepository } from "@jupyterhub/binderhub-client/client.js";

// The client is written for browsers: it calls window.fetch and window.setTimeout, which Node
// has as globals.
globalThis.window ??= globalThis;

const [endpoint, providerSpec, mode] = process.argv.slice(2);
const repo = new BinderRepository(providerSpec, new URL(endpoint), {
  buildOnly: mode === "build_only",
});
let last = null;
for await (const event of repo.fetch()) {
  console.log(JSON.stringify(event));
  last = event.phase;
  if (last === "ready" || last === "failed") {
    repo.close();
    break;
  }
}
process.exit(last === "ready" ? 0 : 1);
