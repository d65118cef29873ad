# Shared by scripts/serve and scripts/test: install Debian packages the way both need it.
# apt_install PURPOSE PACKAGE...: says what it installs and why, waits for another apt/dpkg
# (unattended-upgrades, a second terminal) to finish instead of failing on its lock, and shows
# apt's own progress. Uses sudo when not root.

apt_install() {
  local purpose=$1
  shift
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo ">>> installing Debian packages for $purpose: $*" >&2
  # Wait up to 10 minutes for the dpkg/apt locks instead of failing at once.
  local wait=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
  $sudo apt-get "${wait[@]}" update >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get "${wait[@]}" install -y --no-install-recommends "$@" >&2
  echo ">>> installed: $*" >&2
}

# missing_packages "package:path"...: the packages whose file (a binary, header or module) is
# absent; "package:" with no path: the package is not installed.
missing_packages() {
  local entry package path
  for entry in "$@"; do
    package=${entry%%:*} path=${entry#*:}
    if [ -n "$path" ]; then
      [ -e "$path" ] || printf '%s\n' "$package"
    elif ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
      printf '%s\n' "$package"
    fi
  done
}
