# Bindery: the Jupyter venv comes first in login shells too (/etc/profile resets PATH).
export PATH="/srv/venv/bin:$PATH"
export VIRTUAL_ENV=/srv/venv
