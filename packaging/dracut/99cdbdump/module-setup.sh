#!/bin/bash
# dracut module "cdbdump": the self-contained cdbdump (make capture-exe) in the kdump
# initramfs, for kdump.conf's core_collector line. The unpacked bundle goes in, not
# the one-file build, whose unpack into /tmp would hold it in RAM twice. Install:
#   cp -a .cache/capture/pyinstaller/cdbdump.bundle /usr/lib/cdbdump
#   ln -s /usr/lib/cdbdump/cdbdump /usr/sbin/cdbdump
#   cp -r packaging/dracut/99cdbdump /usr/lib/dracut/modules.d/
# and in /etc/kdump.conf (then `kdumpctl rebuild`):
#   dracut_args --add cdbdump
#   core_collector cdbdump -l --message-level 7 -d 31

CDBDUMP_BUNDLE=/usr/lib/cdbdump

# called by dracut
check() {
    [[ -x $CDBDUMP_BUNDLE/cdbdump ]] || return 1
    return 255  # only when asked for (dracut_args --add cdbdump)
}

# called by dracut
depends() {
    return 0
}

# called by dracut
install() {
    local f
    [[ -x $CDBDUMP_BUNDLE/cdbdump ]] || { derror "cdbdump: no $CDBDUMP_BUNDLE/cdbdump"; return 1; }
    while IFS= read -r -d '' f; do
        inst "$f"
    done < <(find "$CDBDUMP_BUNDLE" \( -type f -o -type l \) -print0)
    ln_r "$CDBDUMP_BUNDLE/cdbdump" /usr/sbin/cdbdump
    # The bundle brings libpython, numpy and the codecs; glibc comes from the system,
    # and the bundle's libraries need these parts of it beside libc.
    inst_libdir_file "libm.so.*" "libpthread.so.*" "libdl.so.*" "librt.so.*" "libutil.so.*"
}
