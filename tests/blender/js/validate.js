// Validate one GLB with the Khronos glTF validator and print a JSON summary on stdout.
const fs = require("fs");
const validator = require("gltf-validator");

const bytes = new Uint8Array(fs.readFileSync(process.argv[2]));
validator.validateBytes(bytes).then((report) => {
  const info = report.info || {};
  const messages = (report.issues.messages || []).filter((m) => m.severity === 0);
  console.log(JSON.stringify({
    numErrors: report.issues.numErrors,
    numWarnings: report.issues.numWarnings,
    hasMorphTargets: info.hasMorphTargets,
    hasSkins: info.hasSkins,
    animationCount: info.animationCount,
    errors: messages.slice(0, 10).map((m) => `${m.code} ${m.pointer || ""} ${m.message}`),
  }));
}, (error) => {
  console.error(String(error));
  process.exit(2);
});
