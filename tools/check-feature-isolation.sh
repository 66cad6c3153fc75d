#!/usr/bin/env bash
# Checks that building the AWS or the Kubernetes driver does not change the
# features of any crate the rest of the workspace also builds: if it did,
# building np-driver-aws (or the launcher, or the workspace) after the other crates
# would rebuild those shared crates, and everything above them, a second
# time with the other feature set. Compares `cargo tree -e features` for the
# workspace without the heavy driver crates against the same with each; needs no build
# (a second or two). Fix a difference by pinning the feature in
# crates/np-core/Cargo.toml (see the comment there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

heavy=(np-driver-aws np-driver-kubernetes np-driver-openstack)
aws_users=(np-driver-aws np-driver-kubernetes np-driver-openstack np-drivers np-launcher np-builder np-cli)
others=()
for dir in crates/*/; do
    name="$(basename "$dir")"
    [ -f "$dir/Cargo.toml" ] || continue
    case " ${aws_users[*]} " in *" $name "*) continue ;; esac
    others+=(-p "$name")
done

tree() { cargo tree "$@" -e normal,build --prefix none -f '{p} [{f}]' | sed 's/ (\*)//' | sort -u; }
without="$(tree "${others[@]}")"
status=0
for driver in "${heavy[@]}"; do
    with="$(tree "${others[@]}" -p "$driver")"
    # Crates in both builds whose sets of feature lists differ (a crate can be
    # built twice, for the host and the target, with different features).
    diff_lines="$(join -t '|' -a 1 \
        <(sed -E 's/^(.*) \[(.*)\]$/\1|[\2]/' <<<"$without" | sort | awk -F '|' '
            { s[$1] = s[$1] " " $2 } END { for (k in s) print k "|" s[k] }' | sort -t '|' -k1,1) \
        <(sed -E 's/^(.*) \[(.*)\]$/\1|[\2]/' <<<"$with" | sort | awk -F '|' '
            { s[$1] = s[$1] " " $2 } END { for (k in s) print k "|" s[k] }' | sort -t '|' -k1,1) |
        awk -F '|' '$2 != $3 { printf "  %s\n    without the driver crates:%s\n    with it:                  %s\n", $1, $2, $3 }')"
    if [ -n "$diff_lines" ]; then
        echo "building $driver changes the features of shared crates:"
        echo "$diff_lines"
        status=1
    fi
done
[ "$status" = 0 ] && echo "feature isolation ok: the AWS, Kubernetes and OpenStack crates change no shared crate's features"
exit "$status"
