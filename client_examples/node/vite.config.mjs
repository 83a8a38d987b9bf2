// Builds the React page in react/ into react/dist. No React plugin: esbuild compiles JSX on its own.
import { defineConfig } from "vite";

export default defineConfig({
  root: "react",
  base: "./",
  esbuild: { jsx: "automatic" },
  build: { outDir: "dist", emptyOutDir: true },
});
