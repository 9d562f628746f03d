// Copies the browser builds the web page loads from web/node_modules (installed by `npm ci`) into
// app/web/static/vendor/, which is gitignored: the page serves them from our own origin, no CDN.
// Run by `make web`; needs only Node.js (no dependencies). FILES below is the one list of the vendor files: it is
// written to vendor/versions.json, from which app/web/page.py learns what to check (and the footer the versions).
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const vendor = join(here, "..", "app", "web", "static", "vendor");

// [package directory in node_modules, file inside it, destination inside vendor/]
const FILES = [
  ["three", "build/three.module.js", "three/build/three.module.js"],
  ["three", "build/three.core.js", "three/build/three.core.js"],
  ["three", "examples/jsm/controls/OrbitControls.js", "three/examples/jsm/controls/OrbitControls.js"],
  ["three", "examples/jsm/postprocessing/Pass.js", "three/examples/jsm/postprocessing/Pass.js"],
  ["three", "LICENSE", "three/LICENSE"],
  ["@sparkjsdev/spark", "dist/spark.module.js", "spark/spark.module.js"],
  ["@sparkjsdev/spark", "LICENSE", "spark/LICENSE"],
];

const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));
rmSync(vendor, { recursive: true, force: true });
const versions = {};
for (const [pkg, file, dest] of FILES) {
  const installed = JSON.parse(readFileSync(join(modules, pkg, "package.json"), "utf8")).version;
  const locked = lock.packages[`node_modules/${pkg}`]?.version;
  if (installed !== locked) {
    throw new Error(`${pkg} ${installed} is installed but the lock file pins ${locked}: run npm ci --prefix web`);
  }
  versions[pkg] = installed;
  mkdirSync(dirname(join(vendor, dest)), { recursive: true });
  copyFileSync(join(modules, pkg, file), join(vendor, dest));
}
// The page shows the versions in its footer; the server checks that the files are there (app/web/page.py).
const manifest = { packages: versions, files: FILES.map(([, , dest]) => dest) };
writeFileSync(join(vendor, "versions.json"), `${JSON.stringify(manifest, null, 2)}\n`);
console.log(`web: copied ${FILES.length} files to ${vendor} (${Object.entries(versions).map(([p, v]) => `${p}@${v}`).join(", ")})`);
