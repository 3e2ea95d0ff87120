// Bundles src/ into meshward/app/static/dashboard (served by `meshward serve`, shipped in the
// wheel): one script, one stylesheet, one page; no CDN, nothing fetched at run time.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';

const out = '../meshward/app/static/dashboard';
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ['src/main.js'],
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['chrome110', 'firefox110', 'safari16'],
  outfile: `${out}/dashboard.js`,
  legalComments: 'linked',
  logLevel: 'warning',
});
copyFileSync('src/index.html', `${out}/index.html`);
copyFileSync('src/dashboard.css', `${out}/dashboard.css`);
