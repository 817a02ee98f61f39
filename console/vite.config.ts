import { defineConfig } from "vite";

// Built into dist/, which `torpor serve` serves at `/` (see src/torpor/console.py).
export default defineConfig({
  base: "/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 800 },
  server: {
    proxy: { "/api": "http://127.0.0.1:8000", "/v1": "http://127.0.0.1:8000", "/openai": "http://127.0.0.1:8000" },
  },
});
