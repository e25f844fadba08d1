#!/bin/bash
# dracut module "cdbdump": the self-contained cdbdump executable (make capture-exe) in
# the kdump initramfs, for kdump.conf's core_collector line. Install:
#   install -m 0755 .cache/capture/pyinstaller/cdbdump /usr/sbin/cdbdump
#   cp -r packaging/dracut/99cdbdump /usr/lib/dracut/modules.d/
# and in /etc/kdump.conf (then `kdumpctl rebuild`):
#   dracut_args --add cdbdump
#   core_collector cdbdump -l --message-level 7 -d 31
# The executable unpacks its bundle into $TMPDIR (default /tmp, RAM in the capture
# kernel): see README "In the capture kernel" for the memory it needs.

# called by dracut
check() {
    require_binaries cdbdump || return 1
    return 255  # only when asked for (dracut_args --add cdbdump)
}

# called by dracut
depends() {
    return 0
}

# called by dracut
install() {
    inst_binary "$(command -v cdbdump)" /usr/sbin/cdbdump
    # The bundle brings its own libpython, numpy and codecs; from the system it takes
    # only glibc, whose libm/libpthread/libdl/librt the bootloader's ldd does not show.
    inst_libdir_file "libm.so.*" "libpthread.so.*" "libdl.so.*" "librt.so.*" "libutil.so.*"
    # a writable $TMPDIR for the unpacked bundle even when /tmp is not mounted
    inst_dir /tmp
}
