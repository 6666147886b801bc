// Copies the browser files the gateway serves from node_modules into its static/vendor/ (run by
// `npm ci` as package.json's postinstall). The copies are committed too, so the gateway package
// works on a machine without npm; this keeps them in step with package-lock.json.
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const vendor = join(here, "src", "bindery", "gateway", "static", "vendor");
const files = {
  "@xterm/xterm/lib/xterm.js": "xterm/xterm.js",
  "@xterm/xterm/css/xterm.css": "xterm/xterm.css",
  "@xterm/xterm/LICENSE": "xterm/LICENSE",
  "@xterm/addon-fit/lib/addon-fit.js": "xterm/addon-fit.js",
};
for (const [source, target] of Object.entries(files)) {
  const destination = join(vendor, target);
  mkdirSync(dirname(destination), { recursive: true });
  copyFileSync(join(root, "node_modules", source), destination);
}
console.log(`vendored ${Object.keys(files).length} files into ${vendor}`);
