"""python -m convert SRC DST [--layout auto|deepseek|hf] [--dtype bfloat16|float32] [--overwrite]

Converts a PyTorch Janus checkpoint (original DeepSeek layout or transformers layout;
safetensors or pytorch_model*.bin, single or sharded) into a converted directory
(Orbax params + config.json + tokenizer files).
"""
from __future__ import annotations

import argparse
import sys

from convert.cli import run


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__.split("\n\n")[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", help="PyTorch checkpoint directory (config.json + weights)")
  parser.add_argument("dst", help="output directory (must not exist unless --overwrite)")
  parser.add_argument("--layout", default="auto", choices=["auto", "deepseek", "hf"])
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                      help="parameter dtype of the converted checkpoint (default bfloat16)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  args = parser.parse_args(argv)

  def job():
    from convert.pipeline import convert
    s = convert(args.src, args.dst, args.layout, args.dtype, args.overwrite,
                progress=not args.quiet)
    return (f"wrote {s['destination']}: {s['params']:,} params ({s['bytes'] / 1e9:.2f} GB "
            f"{s['dtype']}) from a {s['layout']}-layout checkpoint of "
            f"{s['source_bytes'] / 1e9:.2f} GB in {s['seconds']:.1f} s")
  return run(job)


if __name__ == "__main__":
  sys.exit(main())
