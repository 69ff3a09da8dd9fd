# Sourced by the bundle's scripts on the GPU machine (copied there as unpack.sh by
# scripts/gpu_bundle.sh), from the bundle folder: unpacks the binaries the bundle carries
# xz-compressed (bin/NAME.xz: the base and variants of `run.sh ab`, and with variants the
# main binary too, to stay under the device's 64 MiB carry limit).
for z in bin/*.xz; do
  [ -e "$z" ] || continue
  b="${z%.xz}"
  [ -x "$b" ] || { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$z" "$b" && chmod +x "$b"; }
done
